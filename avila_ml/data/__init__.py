"""``avila_ml.data``: datasets, samplers and the DataLoader (``torch.utils.data``; also ``am.utils``).

Example:
    >>> import avila_ml as am
    >>> ds = am.data.TensorDataset(am.arange(6.0).reshape(3, 2), am.tensor([0, 1, 0]))
    >>> x, y = next(iter(am.data.DataLoader(ds, batch_size=2)))
    >>> x.shape, y.tolist()
    ((2, 2), [0, 1])
"""
from .collate import *  # noqa: F401,F403
from .dataloader import *  # noqa: F401,F403
from .dataset import *  # noqa: F401,F403
from .sampler import *  # noqa: F401,F403
from .volume import *  # noqa: F401,F403
from .prefetch import *  # noqa: F401,F403
from .distributed import *  # noqa: F401,F403
from ._worker import WorkerInfo, get_worker_info  # noqa: F401
from . import collate as _collate, dataloader as _dataloader, dataset as _dataset, sampler as _sampler
from . import volume as _volume, prefetch as _prefetch, distributed as _distributed

__all__ = (_dataset.__all__ + _sampler.__all__ + _distributed.__all__ + _dataloader.__all__ + _collate.__all__
           + _volume.__all__ + _prefetch.__all__ + ["WorkerInfo", "get_worker_info"])
