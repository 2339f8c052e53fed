"""Golden 1 mm resamplings made by the reference's torchio, for tests/engine/test_geometry.py.

    python benchmarks/make_geometry_goldens.py --refenv /work/refenv

Writes small NIfTI inputs (as the reference would have them after `as_closest_canonical`),
runs torchio `Resample((1, 1, 1))` on each the way the reference does, inside the reference
tool's virtual environment, and stores input and expected output in
`tests/engine/golden/resample_cases.npz`.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.engine.geometry import to_canonical
from bids_app.phantom.render import Acquisition, _rotation, render_phantom

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "engine" / "golden"
OUT = GOLDEN / "resample_cases.npz"
TORCHIO = """
import sys, numpy as np, nibabel as nib, torch, torchio as tio
# As totalspineseg/utils/resample.py does: nibabel reads the saved file, torchio gets the
# float64 array and the nibabel affine.
for path in sys.argv[1:]:
    img = nib.load(path)
    dtype = np.asanyarray(img.dataobj).dtype
    data = torch.from_numpy(np.asanyarray(img.dataobj).astype(np.float64)[None])
    out = tio.Resample((1, 1, 1))(tio.ScalarImage(tensor=data, affine=img.affine))
    np.savez(path + ".npz", data=out.data.numpy()[0].astype(dtype), affine=out.affine)
"""


def cases() -> dict[str, nib.Nifti1Image]:
    rng = np.random.default_rng(3)
    out = {}
    specs = {
        "psr_1mm": (np.diag([1.0, 1.0, 1.0]), "PSR"),
        "oblique_1mm": (_rotation((8.0, -5.0, 10.0)), "RAS"),
        "sag_0.8x0.8x3": (np.diag([3.0, 0.8, 0.8]), "RAS"),
        "ax_0.7x0.7x4_lps": (np.diag([0.7, 0.7, 4.0]), "LPS"),
    }
    for name, (lin, codes) in specs.items():
        shape = (14, 22, 18)
        data = (rng.random(shape) * 1000).astype(np.int16)
        aff = np.eye(4)
        aff[:3, :3] = lin
        aff[:3, 3] = [-7.3, 12.1, -40.6]
        if codes != "RAS":
            ornt = nib.orientations.axcodes2ornt(tuple(codes))
            aff = aff @ nib.orientations.inv_ornt_aff(ornt, shape)
        img = nib.Nifti1Image(data, aff)
        img.set_qform(aff, code=1)
        out[name] = to_canonical(img)
    # A phantom header (qform and sform both set) whose rotation makes torchio's spacing
    # 0.9999999999999999 on one axis, so its 1 mm grid is one voxel shorter there.
    ph = render_phantom(
        77, Acquisition("cervical", "iso1", "RAS", (8.0, -5.0, 10.0), lr_extent=40.0)
    )
    small = np.asanyarray(ph.image.dataobj)[:14, 60:82, 80:98].copy()
    out["oblique_phantom_header"] = to_canonical(
        nib.Nifti1Image(small, ph.image.affine, ph.image.header)
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refenv", type=Path, required=True)
    args = ap.parse_args()
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, img in cases().items():
            path = GOLDEN / f"{name}.nii.gz"  # the test reads this very file, header included
            nib.save(img, path)
            paths.append(path)
        script = Path(tmp) / "run.py"
        script.write_text(TORCHIO)
        subprocess.run(
            [str(args.refenv / "bin" / "python"), str(script), *map(str, paths)],
            check=True,
            env={"HOME": tmp, "PATH": "/usr/bin:/bin"},
        )
        for path in paths:
            name = path.name[: -len(".nii.gz")]
            result = Path(str(path) + ".npz")
            got = np.load(result)
            arrays[f"{name}/expected"] = got["data"]
            arrays[f"{name}/expected_affine"] = got["affine"]
            result.unlink()
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
