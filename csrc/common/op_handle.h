// Typed handles of registered dip operators, for calling one through the dispatcher from C++
// (the autograd kernels call their forward below autograd and their backward through here).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace dip {

// The registered operator `name` (e.g. "dip::downsample") with C++ signature Sig; look it up
// once per call site (a function-local static).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

}  // namespace dip
