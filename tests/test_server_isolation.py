"""The server package must run without any module that can read images or touch raw masks."""

import subprocess
import sys

FORBIDDEN = (
    "privacysf.center",
    "privacysf.data",
    "privacysf.baseline",
    "privacysf.metrics",
    "privacysf.common.figures",
    "nibabel",
    "SimpleITK",
    "pydicom",
    "tifffile",
    "PIL",
    "monai",
    "nilearn",
    "skimage",
)


def test_importing_the_server_and_its_service_loads_no_image_handling_module():
    code = (
        "import sys, privacysf.server, privacysf.exchange\n"
        "import privacysf.server.store, privacysf.server.jobs, privacysf.server.serving\n"
        "import privacysf.server.federation\n"
        "from privacysf.server.service import create_app\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in forbidden or m.startswith(forbidden))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
