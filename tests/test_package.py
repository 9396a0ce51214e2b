"""``import dip`` and ``dip --help`` without torch; ``dip.fit`` is both the function and the module."""
from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_and_help_do_not_import_torch():
    proc = _python(
        "import sys, contextlib, io\n"
        "import dip\n"
        "assert dip.__version__\n"
        "from dip.cli import build_parser\n"
        "build_parser().format_help()\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    dip.cli.main(['--help'])\n"
        "print('torch' in sys.modules)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_every_public_name_resolves():
    import dip

    assert set(dip.__all__) == {"__version__", *dip._SUBMODULES, *dip._NAMES}
    assert all(getattr(dip, name) is not None for name in dip.__all__)


def test_public_names_load_on_first_use():
    proc = _python(
        "import dip, inspect\n"
        "assert inspect.isfunction(dip.fit) and dip.FitConfig(steps=3).steps == 3\n"
        "assert dip.ops.has_native() in (True, False) and callable(dip.denoise)\n"
        "assert {'fit', 'denoise', 'ops', 'FitResult'} <= set(dir(dip))\n"
        "try:\n"
        "    dip.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n")
    assert proc.returncode == 0, proc.stderr


def test_importing_the_compat_module_keeps_dip_fit_callable():
    # `import dip.fit` binds the package attribute to the module: the module must still fit
    proc = _python(
        "import torch, dip.fit\n"
        "import dip\n"
        "from dip.fit import FitConfig, generator_geometry\n"
        "from dip.models import build\n"
        "from dip.physics import Identity\n"
        "torch.manual_seed(0)\n"
        "g = build('skip', 3, 3, num_channels_down=[4, 4], num_channels_up=[4, 4], num_channels_skip=[2, 2])\n"
        "y = torch.rand(1, 3, 8, 8)\n"
        "z = torch.rand(1, 3, *generator_geometry(g, (8, 8))[1])\n"
        "r = dip.fit(y, Identity(), g, z, FitConfig(steps=2, seed=0))\n"
        "assert r.steps_run == 2 and r.image.shape == (1, 3, 8, 8)\n")
    assert proc.returncode == 0, proc.stderr
