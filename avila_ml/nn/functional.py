"""``avila_ml.nn.functional``: the stateless form of every layer (``torch.nn.functional``).

Each name is implemented once, in its op family under ``avila_ml.ops``; this module only
gathers them under PyTorch's spelling.
"""
from ..ops.linalg import linear  # noqa: F401
from ..ops.shape import pad  # noqa: F401
from ..ops.reduction import softmax, log_softmax  # noqa: F401
from ..ops.elementwise import sigmoid, tanh  # noqa: F401
from ..ops.activation import *  # noqa: F401,F403
from ..ops.dropout import *  # noqa: F401,F403
from ..ops.normalization import *  # noqa: F401,F403
from ..ops.loss import *  # noqa: F401,F403
from ..ops.conv import *  # noqa: F401,F403
from ..ops.pooling import *  # noqa: F401,F403
from ..ops.attention import *  # noqa: F401,F403
from ..ops.embedding import *  # noqa: F401,F403
from ..ops.distance import *  # noqa: F401,F403
from ..ops.vision import *  # noqa: F401,F403
