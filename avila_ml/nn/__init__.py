"""``avila_ml.nn``: modules, layers, losses and initialisers (``torch.nn``)."""
from . import functional, init, utils  # noqa: F401
from .modules.parameter import *  # noqa: F401,F403
from .modules.module import *  # noqa: F401,F403
from .modules.container import *  # noqa: F401,F403
from .modules.linear import *  # noqa: F401,F403
from .modules.activation import *  # noqa: F401,F403
from .modules.dropout import *  # noqa: F401,F403
from .modules.embedding import *  # noqa: F401,F403
from .modules.normalization import *  # noqa: F401,F403
from .modules.loss import *  # noqa: F401,F403
from .modules.conv import *  # noqa: F401,F403
from .modules.pooling import *  # noqa: F401,F403
from .modules.upsampling import *  # noqa: F401,F403
from .modules.attention import *  # noqa: F401,F403
from .modules.transformer import *  # noqa: F401,F403
from .modules.positional import *  # noqa: F401,F403
from .modules.rnn import *  # noqa: F401,F403
