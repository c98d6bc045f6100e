"""A custom autograd Function used inside a model, written as a plain PyTorch script.

``ScaledTanh`` is a ``torch.autograd.Function`` in the usual form (static ``forward(ctx, ...)``
and ``backward(ctx, ...)``, ``save_for_backward``, ``needs_input_grad``); its backward is made of
differentiable ops, so the gradient penalty below (``create_graph=True``) differentiates
through it a second time. ``HingeLoss`` marks its index output non-differentiable. Weights come
from a NumPy RandomState so both libraries start from the same point. Prints
``{"losses": [...]}`` as its last line.
"""
import json

import numpy as np
import torch
import torch.nn as nn


class ScaledTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        y = torch.tanh(x) * scale
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, grad_out):
        (y,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out * (ctx.scale - y * y / ctx.scale)
        return grad_x, None


class HingeLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target):
        margin = 1.0 - pred * target
        active = margin > 0
        ctx.save_for_backward(target, active)
        ctx.mark_non_differentiable(active)
        return (margin * active).mean(), active

    @staticmethod
    def backward(ctx, grad_loss, grad_active):
        target, active = ctx.saved_tensors
        n = target.numel()
        return -grad_loss * target * active / n, None


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(ScaledTanh.apply(self.fc1(x), 1.7)).squeeze(-1)


torch.manual_seed(0)
rs = np.random.RandomState(1)
model = Net()
with torch.no_grad():
    for p in model.parameters():
        p.copy_(torch.tensor(rs.normal(0.0, 0.5, tuple(p.shape)), dtype=torch.float32))

x = torch.tensor(rs.normal(size=(32, 4)), dtype=torch.float32)
y = torch.tensor(np.sign(rs.normal(size=32)), dtype=torch.float32)
optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

losses = []
for step in range(8):
    optimizer.zero_grad()
    inputs = x.clone().requires_grad_(True)
    loss, active = HingeLoss.apply(model(inputs), y)
    # gradient penalty: differentiate the loss w.r.t. the inputs, keeping the graph
    (grad_in,) = torch.autograd.grad(loss, inputs, create_graph=True)
    total = loss + 0.1 * grad_in.pow(2).sum()
    total.backward()
    optimizer.step()
    losses.append(round(total.item(), 6))

print(json.dumps({"losses": losses}))
