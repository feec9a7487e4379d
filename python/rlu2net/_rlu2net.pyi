# Type stubs of the native module (python/src/*.rs). The public API is in __init__.py;
# these are the functions it calls.
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Callback = Optional[Callable[[int, int, str], Any]]
# a path, or (float32 voxels, 4×4 float64 affine, spacing or None, name for messages)
_Source = Union[
    str, Tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], Optional[Tuple[float, float, float]], str]
]

class Model:
    def __init__(
        self,
        path: str,
        device: str = "auto",
        threads: Optional[int] = None,
        overlap: float = 0.5,
        tta: bool = False,
        postprocess: bool = True,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def config(self) -> str: ...
    def segment(
        self,
        ct: Optional[_Source] = None,
        mr: Optional[_Source] = None,
        labels: str = "mmwhs",
        probabilities: bool = False,
        progress: _Callback = None,
    ) -> Dict[str, Dict[str, Any]]: ...

def statistics(
    labels: npt.NDArray[np.float32],
    image: npt.NDArray[np.float32],
    affine: npt.NDArray[np.float64],
    spacing: Optional[Tuple[float, float, float]],
    modality_name: str,
    classes: bool,
) -> str: ...
def evaluate_arrays(
    pred: npt.NDArray[np.float32],
    truth: npt.NDArray[np.float32],
    affine: npt.NDArray[np.float64],
    spacing: Optional[Tuple[float, float, float]],
    modality_name: str,
    classes: bool,
    case: str,
) -> str: ...
def evaluate_folders(pred: str, truth: str, out: Optional[str] = None) -> str: ...
def synth(
    out: str,
    cases: int,
    test_cases: int,
    seed: int,
    paired: bool,
    mr_pose: Optional[int],
    scale: str,
    variety: str,
    preview: bool,
    threads: Optional[int],
    progress: _Callback,
) -> str: ...
def train(
    data: Optional[str],
    out: Optional[str],
    resume: Optional[str],
    config: Optional[str],
    preset: Optional[str],
    epochs: Optional[int],
    steps_per_epoch: Optional[int],
    seed: Optional[int],
    max_minutes: Optional[float],
    device: str,
    threads: Optional[int],
    progress: _Callback,
) -> str: ...
def read(
    path: str, modality_name: str
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], Tuple[float, float, float]]: ...
def devices() -> str: ...
