"""``avila_ml.nn.parallel``: data-parallel training (``torch.nn.parallel``)."""
from .distributed import DistributedDataParallel, consume_prefix_in_state_dict_if_present  # noqa: F401

__all__ = ["DistributedDataParallel", "consume_prefix_in_state_dict_if_present"]
