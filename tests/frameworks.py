"""One adapter per framework, so that tests loop over the three the same way.

Each adapter builds a model without allocating where its framework allows
(torch's meta device, Gluon before `initialize`, `nnx.eval_shape`), and reports
shapes in NCHW so that they compare with `common.arch` directly.
"""
from __future__ import annotations

import numpy as np


class Torch:
    name = "torch"

    def __init__(self):
        import torch

        import vgg_torch.model as m
        self.torch, self.m = torch, m

    def abstract(self, arch, **kw):
        with self.torch.device("meta"):
            return self.m.vgg(arch, **kw)

    def shapes(self, net):
        return self.m.layer_shapes(net)

    def count(self, net):
        return self.m.count_parameters(net)

    def logits(self, arch, x_nchw, **kw):
        self.torch.manual_seed(0)
        net = self.m.vgg(arch, **kw).eval()
        with self.torch.no_grad():
            return net(self.torch.from_numpy(x_nchw)).numpy()

    def params(self, arch, **kw):
        self.torch.manual_seed(0)
        return {k: v.numpy() for k, v in self.m.vgg(arch, **kw).state_dict().items()}


class Gluon:
    name = "gluon"

    def __init__(self):
        import vgg_gluon.model as m  # first: vgg_gluon restores np.bool before mxnet is imported

        import mxnet as mx
        self.mx, self.m = mx, m

    def abstract(self, arch, **kw):
        return self.m.vgg(arch, **kw)  # shapes are known before initialize()

    def shapes(self, net):
        return self.m.layer_shapes(net)

    def count(self, net):
        return self.m.count_parameters(net)

    def logits(self, arch, x_nchw, **kw):
        net = self.m.vgg(arch, **kw)
        net.initialize(ctx=self.mx.cpu())
        net.hybridize()
        return net(self.mx.nd.array(x_nchw)).asnumpy()  # outside autograd.record(): inference mode

    def params(self, arch, **kw):
        net = self.m.vgg(arch, **kw)
        net.initialize(ctx=self.mx.cpu())
        return {k: p.data().asnumpy() for k, p in net._collect_params_with_prefix().items()}


class Flax:
    name = "flax"

    def __init__(self):
        from flax import nnx

        import vgg_flax.model as m
        self.nnx, self.m = nnx, m

    def abstract(self, arch, **kw):
        return self.nnx.eval_shape(lambda: self.m.vgg(arch, **kw))

    def shapes(self, net):  # NHWC -> NCHW for the blocks
        return [(n, (s[0], s[3], s[1], s[2]) if len(s) == 4 else s) for n, s in self.m.layer_shapes(net)]

    def count(self, net):
        return self.m.count_parameters(net)

    def logits(self, arch, x_nchw, **kw):
        model = self.m.vgg(arch, **kw)
        model.eval()
        return np.asarray(model(np.transpose(x_nchw, (0, 2, 3, 1))))

    def params(self, arch, **kw):
        state = self.nnx.state(self.m.vgg(arch, **kw), (self.nnx.Param, self.nnx.BatchStat))
        return {".".join(map(str, k)): np.asarray(v.value) for k, v in self.nnx.to_flat_state(state)}


ADAPTERS = {"torch": Torch, "gluon": Gluon, "flax": Flax}
