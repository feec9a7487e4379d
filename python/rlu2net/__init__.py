"""RL-U²Net whole-heart segmentation of CT and MRI, from Python.

The same Rust core as the ``rlu2net`` command line, called in memory::

    import rlu2net
    model = rlu2net.load("demo-out/run")
    seg = model.segment(ct="ct.nii.gz")            # a path, a nibabel image or an array
    print(seg.labels.shape, seg.affine)            # labels on the input's own grid
    print(rlu2net.statistics(seg, "ct.nii.gz")["lv_blood_pool_ml"])

Conventions
-----------
* Axes: an array ``a[i, j, k]`` is voxel (i, j, k) of the grid its ``affine`` maps to
  world millimetres in RAS+ (x right, y anterior, z superior), exactly as a NIfTI file
  and nibabel's ``img.get_fdata()`` / ``img.affine``. C and Fortran memory order are the
  same array. SimpleITK and nnU-Net's ``(z, y, x)`` arrays are reversed: pass
  ``a.transpose(2, 1, 0)`` with a RAS affine (LPS → RAS flips x and y).
* ``spacing=`` instead of ``affine=`` means the affine ``diag(spacing)``: voxel axes along
  R, A, S, with the origin at voxel 0.
* Labels: MM-WHS values (0 background, 205 Myo, 420 LA, 500 LV, 550 RA, 600 RV, 820 AA,
  850 PA) with ``labels="mmwhs"`` (default), or class indices 0 … 7 in that order with
  ``labels="classes"``.
* Devices: ``device="auto"`` (a hardware GPU when the package was built with the
  ``gpu`` feature and one is present, else the CPU), ``"cpu"``, ``"gpu"``, ``"gpu:N"``.
  ``threads=N`` bounds the CPU threads of that call or model (default: all cores).
* Errors raise ``FileNotFoundError``, ``OSError`` or ``ValueError`` with the message the
  command line prints; Ctrl-C raises ``KeyboardInterrupt`` (inference stops after its
  current batch of windows, training after its current step, with a checkpoint).
  Computations release the GIL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union, overload

import numpy as np

from . import _rlu2net

__version__: str = _rlu2net.__version__

#: The seven structures, in the paper's Table 1 order (classes 1 … 7).
STRUCTURES: Tuple[str, ...] = ("Myo", "LA", "LV", "RA", "RV", "AA", "PA")
#: MM-WHS label value of each class 0 … 7.
LABEL_VALUES: Tuple[int, ...] = (0, 205, 420, 500, 550, 600, 820, 850)

PathLike = Union[str, "os.PathLike[str]"]
Progress = Union[bool, Callable[[int, int], Any], None]

__all__ = [
    "Image",
    "LABEL_VALUES",
    "Model",
    "STRUCTURES",
    "Segmentation",
    "devices",
    "evaluate",
    "load",
    "read",
    "statistics",
    "synth",
    "train",
]


@dataclass
class Image:
    """A voxel array with its grid: give two arrays on different grids as
    ``segment(ct=Image(a, affine=A), mr=Image(b, spacing=(1, 1, 2)))``."""

    array: np.ndarray
    affine: Optional[np.ndarray] = None
    spacing: Optional[Sequence[float]] = None


class Segmentation:
    """One volume's segmentation, on the grid of the input it was computed from.

    ``labels`` (int16 MM-WHS values, or uint8 classes), ``affine`` (4×4, RAS mm, the
    input's), ``spacing`` (mm), and with ``probabilities=True`` the class probabilities
    ``[8, X, Y, Z]`` on the model's working grid with ``probabilities_affine``. It behaves
    as a nibabel image where one is expected (``.dataobj``, ``.affine``, ``.shape``) and
    ``to_nifti()`` makes one.
    """

    def __init__(self, modality: str, d: Dict[str, Any]):
        self.modality: str = modality
        self.labels: np.ndarray = d["labels"]
        self.affine: np.ndarray = d["affine"]
        self.spacing: Tuple[float, float, float] = tuple(d["spacing"])  # type: ignore[assignment]
        self.probabilities: Optional[np.ndarray] = d.get("probabilities")
        self.probabilities_affine: Optional[np.ndarray] = d.get("probabilities_affine")

    @property
    def dataobj(self) -> np.ndarray:
        return self.labels

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.labels.shape

    def get_fdata(self, dtype: Any = np.float64) -> np.ndarray:
        return self.labels.astype(dtype)

    def to_nifti(self) -> Any:
        """A ``nibabel.Nifti1Image`` of the labels (needs nibabel)."""
        import nibabel

        img = nibabel.Nifti1Image(self.labels, self.affine)
        img.header.set_zooms(self.spacing)
        return img

    def __repr__(self) -> str:
        return f"Segmentation({self.modality}, shape={self.labels.shape}, dtype={self.labels.dtype})"


# ---- inputs --------------------------------------------------------------------------


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _float32(a: Any, name: str) -> np.ndarray:
    arr = np.asanyarray(a)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: an array of numbers is needed, got dtype {arr.dtype}")
    # keeps the memory order (C or Fortran); no copy when already float32
    return np.asarray(arr, dtype=np.float32)


def _grid(
    name: str, affine: Any, spacing: Any
) -> Tuple[np.ndarray, Optional[Tuple[float, float, float]]]:
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)
        return np.ascontiguousarray(a), (None if spacing is None else _spacing(spacing, name))
    if spacing is not None:
        s = _spacing(spacing, name)
        return np.diag([s[0], s[1], s[2], 1.0]), s
    raise ValueError(
        f"{name}: a numpy array needs affine= (4×4, voxel to RAS mm) or spacing= (mm per axis)"
    )


def _spacing(spacing: Any, name: str) -> Tuple[float, float, float]:
    s = tuple(float(v) for v in spacing)
    if len(s) != 3:
        raise ValueError(f"{name}: spacing needs 3 values, got {len(s)}")
    return s  # type: ignore[return-value]


def _is_image(x: Any) -> bool:
    return hasattr(x, "affine") and (hasattr(x, "dataobj") or hasattr(x, "get_fdata"))


def _array_source(x: Any, name: str, affine: Any = None, spacing: Any = None) -> tuple:
    """(float32 array, affine, spacing or None, name) of an Image, a nibabel-like image
    or an array with affine=/spacing=."""
    if isinstance(x, Image):
        return (_float32(x.array, name), *_grid(name, x.affine, x.spacing), name)
    if _is_image(x):
        data = np.asanyarray(x.dataobj) if hasattr(x, "dataobj") else x.get_fdata()
        zooms = None
        header = getattr(x, "header", None)
        if header is not None and hasattr(header, "get_zooms"):
            zooms = tuple(float(z) for z in header.get_zooms()[:3])
            if len(zooms) < 3:
                zooms = None
        return (_float32(data, name), *_grid(name, x.affine, zooms), name)
    return (_float32(x, name), *_grid(name, affine, spacing), name)


def _source(x: Any, name: str, affine: Any, spacing: Any) -> Any:
    if x is None:
        return None
    if _is_path(x):
        return os.fspath(x)
    return _array_source(x, name, affine, spacing)


def _progress(progress: Progress, desc: str) -> Tuple[Optional[Callable], Callable[[], None]]:
    """The native callback ``(done, total, message)`` for ``progress``, and a closer."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None, lambda: None
        bar = tqdm(total=0, desc=desc, unit="")

        def update(done: int, total: int, message: str) -> None:
            if total and bar.total != total:
                bar.total = total
            bar.n = done
            if message:
                bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        return update, bar.close
    if callable(progress):
        user = progress
        return (lambda done, total, message: user(done, total)), lambda: None
    raise ValueError("progress must be True, False, None or a callable(done, total)")


def _call(progress: Progress, desc: str, f: Callable[[Optional[Callable]], Any]) -> Any:
    cb, close = _progress(progress, desc)
    try:
        return f(cb)
    finally:
        close()


# ---- the model -----------------------------------------------------------------------


class Model:
    """A trained RL-U²Net, loaded once (see :func:`load`)."""

    def __init__(self, native: Any):
        self._native = native

    @property
    def path(self) -> str:
        return os.fspath(self._native.path)

    @property
    def device(self) -> str:
        """Where it computes, as ``rlu2net devices`` names it."""
        return self._native.device

    @property
    def config(self) -> str:
        """The training configuration, as the run folder's ``config.toml``."""
        return self._native.config

    def __repr__(self) -> str:
        return repr(self._native)

    @overload
    def segment(
        self, ct: Any, mr: None = None, *, affine: Any = None, spacing: Any = None,
        labels: str = "mmwhs", probabilities: bool = False, progress: Progress = False,
    ) -> Segmentation: ...

    @overload
    def segment(
        self, ct: None = None, *, mr: Any, affine: Any = None, spacing: Any = None,
        labels: str = "mmwhs", probabilities: bool = False, progress: Progress = False,
    ) -> Segmentation: ...

    @overload
    def segment(
        self, ct: Any, mr: Any, *, affine: Any = None, spacing: Any = None,
        labels: str = "mmwhs", probabilities: bool = False, progress: Progress = False,
    ) -> Tuple[Segmentation, Segmentation]: ...

    def segment(
        self,
        ct: Any = None,
        mr: Any = None,
        *,
        affine: Any = None,
        spacing: Any = None,
        labels: str = "mmwhs",
        probabilities: bool = False,
        progress: Progress = False,
    ) -> Any:
        """Segment a CT and/or an MRI, as ``rlu2net infer --ct … --mr …`` does.

        Each input is a path (NIfTI, or a DICOM series: a folder, ``.zip`` or a multi-frame
        file), a nibabel image (anything with ``.affine`` and ``.dataobj``), an
        :class:`Image`, or a numpy array of any dtype and memory order with ``affine=``
        (4×4, RAS mm) or ``spacing=`` (these two apply to every bare array given). Given
        both, the pair is predicted together (paired); one alone is predicted by itself.

        Returns a :class:`Segmentation` for one input, ``(ct, mr)`` for two. Labels are
        MM-WHS values (``labels="mmwhs"``) or class indices (``labels="classes"``).
        ``progress``: ``True`` for a tqdm bar (when tqdm is installed), or a callable
        ``progress(done_windows, total_windows)``.
        """
        if ct is None and mr is None:
            raise ValueError("give ct= and/or mr=")
        cs = _source(ct, "<ct array>", affine, spacing)
        ms = _source(mr, "<mr array>", affine, spacing)
        out = _call(
            progress,
            "segment",
            lambda cb: self._native.segment(cs, ms, labels, probabilities, cb),
        )
        got = {k: Segmentation(k, v) for k, v in out.items()}
        if ct is not None and mr is not None:
            return got["ct"], got["mr"]
        return got["ct"] if ct is not None else got["mr"]


def load(
    path: PathLike,
    *,
    device: str = "auto",
    threads: Optional[int] = None,
    overlap: float = 0.5,
    tta: bool = False,
    postprocess: bool = True,
) -> Model:
    """Load a run folder from :func:`train` / ``rlu2net train`` (its best checkpoint, else
    its last) or a model file from ``rlu2net export``.

    ``overlap``: of the sliding windows (0 ≤ overlap < 1); ``tta``: average the 8 mirrored
    passes; ``postprocess``: keep only each structure's largest connected piece.
    """
    return Model(
        _rlu2net.Model(os.fspath(path), device, threads, overlap, tta, postprocess)
    )


# ---- statistics and evaluation -------------------------------------------------------


def read(path: PathLike, *, modality: str = "ct") -> Image:
    """Read a NIfTI file or a DICOM series (a folder, ``.zip`` or multi-frame file) with
    the reader ``segment`` uses: an :class:`Image` (float32 voxels as stored, with the
    scaling applied, its affine and spacing). ``modality`` is checked against a DICOM
    series' own."""
    data, affine, spacing = _rlu2net.read(os.fspath(path), modality)
    return Image(data, affine=affine, spacing=tuple(spacing))


def _volume_of(x: Any, name: str, affine: Any, spacing: Any, modality: str) -> tuple:
    """(float32 array, affine, spacing, name) of a path, a Segmentation, an image or an
    array (with affine=/spacing=)."""
    if _is_path(x):
        x = read(x, modality=modality)
    if isinstance(x, Segmentation):
        return (_float32(x.labels, name), *_grid(name, x.affine, x.spacing), name)
    return _array_source(x, name, affine, spacing)


def _bare(x: Any) -> bool:
    return not _is_path(x) and not isinstance(x, (Segmentation, Image)) and not _is_image(x)


def _two_on_one_grid(
    a: Any, b: Any, names: Tuple[str, str], affine: Any, spacing: Any, modality: str
) -> Tuple[tuple, tuple]:
    """Two volumes on one grid: each with its own grid when it carries one; a bare array
    takes affine=/spacing=, else the other one's grid."""
    given = affine is not None or spacing is not None

    def own(x: Any, name: str) -> Optional[tuple]:
        if _bare(x) and not given:
            return None
        return _volume_of(x, name, affine, spacing, modality)

    va, vb = own(a, names[0]), own(b, names[1])
    if va is None and vb is None:
        raise ValueError("two bare arrays need affine= (4×4, RAS mm) or spacing=")
    if va is None:
        va = (_float32(a, names[0]), vb[1], vb[2], names[0])  # type: ignore[index]
    if vb is None:
        vb = (_float32(b, names[1]), va[1], va[2], names[1])
    if va[0].shape[:3] != vb[0].shape[:3]:
        raise ValueError(
            f"{names[0]} has shape {va[0].shape}, {names[1]} {vb[0].shape}: both must be on the same grid"
        )
    return va, vb


def statistics(
    labels: Any,
    image: Any,
    affine: Any = None,
    *,
    spacing: Any = None,
    modality: str = "ct",
    label_kind: str = "mmwhs",
) -> Dict[str, Any]:
    """Per structure the volume (mL) and the mean and SD of ``image`` inside it (HU for
    CT), the LV and RV blood pools and the LV myocardial mass: ``statistics.json`` of
    ``rlu2net infer --statistics``. ``labels`` and ``image`` share one grid; each is a
    :class:`Segmentation`, a nibabel image, a path, or an array (with ``affine=`` or
    ``spacing=``, else on the other one's grid). Volumes use the affine's voxel size."""
    la, im = _two_on_one_grid(labels, image, ("<labels>", "<image>"), affine, spacing, modality)
    text = _rlu2net.statistics(la[0], im[0], im[1], im[2], modality, _kind(label_kind))
    return json.loads(text)


def _kind(label_kind: str) -> bool:
    if label_kind not in ("mmwhs", "classes"):
        raise ValueError(f'labels={label_kind!r}: use "mmwhs" or "classes"')
    return label_kind == "classes"


def _confusion_arrays(d: Any) -> Any:
    if isinstance(d, dict):
        return {
            k: (np.asarray(v, dtype=np.int64) if k == "confusion" else _confusion_arrays(v))
            for k, v in d.items()
        }
    if isinstance(d, list):
        return [_confusion_arrays(v) for v in d]
    return d


def evaluate(
    pred: Any,
    truth: Any,
    *,
    affine: Any = None,
    spacing: Any = None,
    modality: str = "ct",
    label_kind: str = "mmwhs",
    out: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """Dice and HD95 per structure and the 8×8 confusion matrix (rows: truth, columns:
    prediction; numpy int64).

    Two folders: ``rlu2net evaluate --pred PRED --truth TRUTH [--out OUT]``, its
    ``report.json`` as a dict (``cases``, ``means``). Two label maps on one grid (paths,
    Segmentations, nibabel images or arrays with ``affine=``/``spacing=``; HD95 in the
    truth's millimetres): one case's scores, ``dice``, ``hd95``, ``reasons`` (why a score
    is missing), ``confusion``, ``mean_dice``.
    """
    if _is_path(pred) and _is_path(truth) and os.path.isdir(pred) and os.path.isdir(truth):
        text = _rlu2net.evaluate_folders(
            os.fspath(pred), os.fspath(truth), None if out is None else os.fspath(out)
        )
        return _confusion_arrays(json.loads(text))
    p, t = _two_on_one_grid(pred, truth, ("<pred>", "<truth>"), affine, spacing, modality)
    r = json.loads(
        _rlu2net.evaluate_arrays(p[0], t[0], t[1], t[2], modality, _kind(label_kind), "case")
    )
    dice = [v for v in r["dice"].values() if v is not None]
    r["mean_dice"] = float(np.mean(dice)) if dice else None
    r.pop("case", None)
    return _confusion_arrays(r)


# ---- data and training ---------------------------------------------------------------


def synth(
    out: PathLike,
    *,
    cases: int = 20,
    test_cases: int = 10,
    seed: int = 0,
    paired: bool = True,
    mr_pose: Optional[int] = None,
    scale: str = "default",
    variety: str = "varied",
    preview: bool = False,
    threads: Optional[int] = None,
    progress: Progress = False,
) -> Dict[str, Any]:
    """Write a SynthWHS data set (``rlu2net synth``) in the MM-WHS layout; returns its
    manifest (``manifest.json``). ``scale``: ``"small"``, ``"default"`` or ``"paper"``;
    ``variety``: ``"varied"`` (synthwhs-2), ``"classic"`` (synthwhs-1), ``"held-out"``
    (synthwhs-2 with every drawn value outside the training ranges) or ``"held-out-anatomy"``,
    ``"held-out-appearance"``, ``"held-out-geometry"`` (one group outside)."""
    text = _call(
        progress,
        "synth",
        lambda cb: _rlu2net.synth(
            os.fspath(out),
            cases,
            test_cases,
            seed,
            paired,
            mr_pose,
            scale,
            variety,
            preview,
            threads,
            cb,
        ),
    )
    return json.loads(text)


def train(
    data: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    *,
    resume: Optional[PathLike] = None,
    config: Optional[PathLike] = None,
    preset: Optional[str] = None,
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    seed: Optional[int] = None,
    max_minutes: Optional[float] = None,
    device: str = "auto",
    threads: Optional[int] = None,
    progress: Progress = True,
) -> Dict[str, Any]:
    """Train RL-U²Net on an MM-WHS-layout folder into the run folder ``out``
    (``rlu2net train``), or continue the run ``resume``. ``preset``: ``"tiny"``,
    ``"cpu"`` (default for a new run) or ``"paper"``; ``config``: a TOML file over the
    preset. Progress goes to a tqdm bar when tqdm is installed (``progress=True``), or to
    a callable ``progress(step, total_steps)``. Ctrl-C stops at the end of the current
    step with a checkpoint written (``resume=out`` continues) and raises
    ``KeyboardInterrupt``. Returns ``steps``, ``first_loss``, ``last_loss``,
    ``best_val_dice``, ``stopped_early`` and ``augmentation_pose`` (the rotation index the
    spatial augmentation kept, or ``None`` without it); :func:`load` reads the run."""
    f = lambda p: None if p is None else os.fspath(p)  # noqa: E731
    text = _call(
        progress,
        "train",
        lambda cb: _rlu2net.train(
            f(data),
            f(out),
            f(resume),
            f(config),
            preset,
            epochs,
            steps_per_epoch,
            seed,
            max_minutes,
            device,
            threads,
            cb,
        ),
    )
    return json.loads(text)


def devices() -> str:
    """The devices ``device=`` chooses among, as ``rlu2net devices`` lists them."""
    return _rlu2net.devices()
