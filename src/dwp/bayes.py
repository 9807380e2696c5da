"""Variational Bayesian layers with a factorised Gaussian posterior, and the ELBO around them.

``BayesConv2d`` / ``BayesLinear`` hold q(w) = N(mu, exp(log_sigma2)) over their weights (the
bias stays a deterministic parameter, as in the paper's code), a prior over single kernels (any
:class:`~dwp.priors.base.KernelPrior`) and, for implicit priors, their own reverse model
r(z | w) (paper Algorithm 1). ``forward`` always returns a plain tensor; the KL term (or the
auxiliary bound of paper Eq. 7) is a separate differentiable function :func:`kl` over a model.

Forward modes (set with the :func:`sampling` context manager, default ``"lrt"``):

- ``"lrt"``: local reparameterisation (Kingma et al., 2015): the pre-activation of every output
  unit is drawn from its exact Gaussian marginal N(x*mu, x^2*sigma^2), independently per example;
- ``"sample"``: one weight sample per forward call, shared by the batch;
- ``"fixed"``: one weight sample drawn on entering the context and reused until it exits
  (an ensemble member over many batches);
- ``"mean"``: the posterior mean weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dwp.convimpl import CONV_IMPLS, col2out, conv2d_unfold, im2col
from dwp.priors.base import KernelPrior
from dwp.priors.loguniform import MU2_FLOOR
from dwp.runtime import DwpError

MODES = ("lrt", "sample", "fixed", "mean")
#: Values of ``--conv-impl`` for variational layers (see :meth:`BayesConv2d.set_conv_impl`).
BNN_CONV_IMPLS = ("mixed", "native", "unfold")
INITS = ("xavier", "prior", "prior-mean", "copy")
#: How q(w) = N(mu, sigma^2) is parameterised (see :class:`_BayesLayer`).
POSTERIORS = ("gaussian", "truncated-alpha")
_VAR_EPS = 1e-8  # added to the LRT variance before the square root (finite gradients)


class _BayesLayer(nn.Module):
    """Shared machinery of the variational layers (not used directly).

    Two parameterisations of q(w) = N(mu, sigma^2), chosen with ``posterior``:

    - ``"gaussian"`` (default): free ``weight_mu`` and ``log_sigma2`` per weight
      (initialised to ``log_sigma2_init``);
    - ``"truncated-alpha"``: sigma^2 = alpha * mu^2 with alpha = sigmoid(``alpha_logit``) < 1,
      per weight (initialised to ``alpha_logit_init``; the paper's code: -2, alpha = 0.12).
      This is the multiplicative-noise posterior of variational dropout with alpha truncated
      below 1, the posterior the paper's log-uniform baseline used: under the log-uniform prior
      an untruncated alpha can grow without bound and switch every weight off.
    """

    weight_mu: nn.Parameter
    bias: nn.Parameter | None

    def _setup(
        self,
        weight_shape: tuple[int, ...],
        bias: bool,
        out_features: int,
        prior: KernelPrior | None,
        log_sigma2_init: float,
        freeze_reverse: bool,
        posterior: str = "gaussian",
        alpha_logit_init: float = -2.0,
    ) -> None:
        if posterior not in POSTERIORS:
            raise DwpError(f"unknown posterior {posterior!r}: use one of {', '.join(POSTERIORS)}")
        self.posterior = posterior
        self.weight_mu = nn.Parameter(torch.empty(weight_shape))
        if posterior == "gaussian":
            self.log_sigma2 = nn.Parameter(torch.full(weight_shape, float(log_sigma2_init)))
        else:
            self.alpha_logit = nn.Parameter(torch.full(weight_shape, float(alpha_logit_init)))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("bias", None)
        nn.init.xavier_normal_(self.weight_mu)
        self.mode = "lrt"
        self._fixed_weight: torch.Tensor | None = None
        self.freeze_reverse = bool(freeze_reverse)
        self.prior: KernelPrior | None = None
        self.reverse: nn.Module | None = None
        self.set_prior(prior)

    # -- prior -----------------------------------------------------------------------------
    def set_prior(self, prior: KernelPrior | None, freeze_reverse: bool | None = None) -> None:
        """Attach ``prior`` (its parameters are frozen) and a fresh reverse model for it.

        For implicit priors the layer gets its own r(z | w) from ``prior.make_reverse()``
        (initialised from the prior's encoder); it is trained jointly with q unless
        ``freeze_reverse`` (the behaviour of the paper's published code).
        """
        if prior is not None and not isinstance(prior, KernelPrior):
            raise DwpError(f"prior must be a dwp KernelPrior, got {type(prior).__name__}")
        if freeze_reverse is not None:
            self.freeze_reverse = bool(freeze_reverse)
        self.prior = prior
        reverse = None
        if prior is not None:
            for p in prior.parameters():
                p.requires_grad_(False)
            reverse = prior.make_reverse()
            if reverse is not None:
                ref = next(iter(prior.parameters()), None)
                if ref is not None:
                    reverse = reverse.to(ref.device)
                for p in reverse.parameters():
                    p.requires_grad_(not self.freeze_reverse)
        self.reverse = reverse

    # -- posterior -------------------------------------------------------------------------
    def weight_var(self) -> torch.Tensor:
        """Posterior variances sigma^2, shaped like ``weight_mu`` (differentiable)."""
        if self.posterior == "gaussian":
            return torch.exp(self.log_sigma2)
        return torch.sigmoid(self.alpha_logit) * self.weight_mu.square()

    def weight_log_var(self) -> torch.Tensor:
        """Posterior log-variances log sigma^2, shaped like ``weight_mu`` (differentiable).

        For ``"truncated-alpha"`` this is log sigmoid(alpha_logit) + log(mu^2 + 1e-16), so that
        log sigma^2 - log(mu^2 + 1e-16) (the log-uniform KL's log alpha) is exactly
        log sigmoid(alpha_logit).
        """
        if self.posterior == "gaussian":
            return self.log_sigma2
        return F.logsigmoid(self.alpha_logit) + torch.log(self.weight_mu.square() + MU2_FLOOR)

    def kernels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and log-variances as a batch of kernels, each (n, kh, kw)."""
        kh, kw = self._kernel_hw()
        return self.weight_mu.reshape(-1, kh, kw), self.weight_log_var().reshape(-1, kh, kw)

    def sample_weight(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One reparameterised weight sample w = mu + sigma * eps (differentiable)."""
        eps = torch.randn(
            self.weight_mu.shape, generator=generator, device=self.weight_mu.device,
            dtype=self.weight_mu.dtype,
        ) if generator is not None else torch.randn_like(self.weight_mu)
        return self.weight_mu + torch.sqrt(self.weight_var()) * eps

    def num_kernels(self) -> int:
        """How many single kernels this layer's weights hold (out * in/groups for a conv)."""
        kh, kw = self._kernel_hw()
        return self.weight_mu.numel() // (kh * kw)

    def kl(
        self,
        kernel_subsample: int | None = None,
        generator: torch.Generator | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """This layer's KL(q || p) (or its auxiliary upper bound), a scalar in nats.

        ``kernel_subsample = m`` estimates it unbiasedly from m kernels drawn uniformly without
        replacement, rescaled by n / m (n = number of kernels). ``index`` (m,) gives those
        kernels instead of drawing them (e.g. one draw shared by nets trained together under
        ``vmap``). Zero without a prior.
        """
        if self.prior is None:
            return self.weight_mu.new_zeros(())
        mu, log_var = self.kernels()
        n = mu.shape[0]
        if index is None and kernel_subsample is not None and kernel_subsample < n:
            index = _subsample_index(n, kernel_subsample, generator)
        if index is not None:
            index = index.to(mu.device)
            terms = self.prior.kl(mu[index], log_var[index], self.reverse)
            return terms.sum() * (n / index.shape[0])
        return self.prior.kl(mu, log_var, self.reverse).sum()

    # -- forward ---------------------------------------------------------------------------
    def _weight_for_mode(self) -> torch.Tensor:
        if self.mode == "mean":
            return self.weight_mu
        if self.mode == "sample":
            return self.sample_weight()
        if self._fixed_weight is None:
            raise DwpError("mode 'fixed' is only valid inside dwp.bayes.sampling(model, 'fixed')")
        return self._fixed_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "lrt":
            return self._lrt(x)
        return self._op(x, self._weight_for_mode(), self.bias)

    def _lrt(self, x: torch.Tensor) -> torch.Tensor:
        mean = self._op(x, self.weight_mu, self.bias)
        var = self._op(x * x, self.weight_var(), None)
        return mean + torch.sqrt(var + _VAR_EPS) * torch.randn_like(mean)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _kernel_hw(self) -> tuple[int, int]:
        raise NotImplementedError


class BayesConv2d(_BayesLayer):
    """A 2-D convolution with q(w) = N(mu, sigma^2) over its (out, in/groups, kh, kw) weights.

    Input (B, in, H, W) -> output (B, out, H', W'), like ``nn.Conv2d`` with the same arguments
    (``padding_mode`` other than ``"zeros"`` included). ``conv_impl`` chooses how the
    convolutions compute (:meth:`set_conv_impl`); every choice gives the same results up to
    float rounding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        prior: KernelPrior | None = None,
        log_sigma2_init: float = -10.0,
        freeze_reverse: bool = False,
        posterior: str = "gaussian",
        alpha_logit_init: float = -2.0,
        conv_impl: str = "mixed",
    ) -> None:
        super().__init__()
        ref = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            bias=False, padding_mode=padding_mode, device="meta",
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = ref.kernel_size
        self.stride, self.padding, self.dilation = ref.stride, ref.padding, ref.dilation
        self.groups, self.padding_mode = groups, padding_mode
        self._pad4 = ref._reversed_padding_repeated_twice
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._setup(shape, bias, out_channels, prior, log_sigma2_init, freeze_reverse,
                    posterior, alpha_logit_init)
        self.set_conv_impl(conv_impl)

    def set_conv_impl(self, conv_impl: str) -> None:
        """How the layer computes its convolutions (results agree up to float rounding).

        ``"native"``: ``F.conv2d``; ``"unfold"``: im2col + matrix products
        (:mod:`dwp.convimpl`) wherever the layer allows it (groups = 1, numeric zero padding);
        ``"mixed"`` (default; ``"auto"`` means the same here, on every device): im2col only for
        a layer with one input channel, the first layer of a grey-image net. There the LRT's
        two convolutions share one im2col of the input and need no input gradient: on a
        2-core CPU the layer's forward and backward take less time than oneDNN's
        convolution, and under vmap (seeds trained at once) a one-channel convolution would
        become a depthwise grouped one, which is slow on CUDA (see :mod:`dwp.convimpl`).
        """
        if conv_impl not in CONV_IMPLS:
            raise DwpError(f"unknown conv_impl {conv_impl!r}: use one of {', '.join(CONV_IMPLS)}")
        eligible = (self.groups == 1 and self.padding_mode == "zeros"
                    and not isinstance(self.padding, str))
        if conv_impl in ("auto", "mixed"):  # one-channel layers only
            eligible = eligible and self.in_channels == 1
        self.conv_impl = conv_impl
        self._unfold = eligible and conv_impl != "native"

    def _kernel_hw(self) -> tuple[int, int]:
        return self.kernel_size

    def _lrt(self, x: torch.Tensor) -> torch.Tensor:
        if not self._unfold:
            return super()._lrt(x)
        o = self.out_channels
        cols, shape = im2col(x, self.kernel_size, self.stride, self.padding, self.dilation)
        w_mu = self.weight_mu.reshape(o, -1).t()
        mean = cols @ w_mu if self.bias is None else torch.addmm(self.bias, cols, w_mu)
        var = (cols * cols) @ self.weight_var().reshape(o, -1).t()
        mean, var = col2out(mean, shape), col2out(var, shape)  # (B, O, H', W') views
        # noise drawn in (B, O, H', W') order, as F.conv2d's path draws it: for one generator
        # state both paths add the same noise to the same unit
        eps = torch.randn_like(mean, memory_format=torch.contiguous_format)
        return (mean + torch.sqrt(var + _VAR_EPS) * eps).contiguous()

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self._unfold:
            return conv2d_unfold(x, w, b, self.stride, self.padding, self.dilation)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad4, mode=self.padding_mode)
            return F.conv2d(x, w, b, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        prior = self.prior.family if self.prior is not None else None
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, prior={prior}, "
            f"posterior={self.posterior}, mode={self.mode}, conv_impl={self.conv_impl}"
        )


class BayesLinear(_BayesLayer):
    """A linear layer with q(w) = N(mu, sigma^2) over its (out, in) weights: (B, in) -> (B, out).

    For the prior every weight is a 1x1 kernel, so ``kernels()`` returns (out*in, 1, 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior: KernelPrior | None = None,
        log_sigma2_init: float = -10.0,
        freeze_reverse: bool = False,
        posterior: str = "gaussian",
        alpha_logit_init: float = -2.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        shape = (out_features, in_features)
        self._setup(shape, bias, out_features, prior, log_sigma2_init, freeze_reverse,
                    posterior, alpha_logit_init)

    def _kernel_hw(self) -> tuple[int, int]:
        return (1, 1)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        prior = self.prior.family if self.prior is not None else None
        return (f"{self.in_features}, {self.out_features}, prior={prior}, "
                f"posterior={self.posterior}, mode={self.mode}")


# -- functions over models -----------------------------------------------------------------
def bayes_layers(model: nn.Module) -> list[tuple[str, _BayesLayer]]:
    """The (name, layer) pairs of every variational layer in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BayesLayer)]


@contextmanager
def sampling(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Set every variational layer of ``model`` to ``mode`` for the ``with`` block, then restore.

    ``mode`` is one of ``"lrt"``, ``"sample"``, ``"fixed"`` (one weight sample held for the
    whole block), ``"mean"``.
    """
    if mode not in MODES:
        raise DwpError(f"unknown sampling mode {mode!r}: use one of {', '.join(MODES)}")
    layers = [m for _, m in bayes_layers(model)]
    saved = [(m.mode, m._fixed_weight) for m in layers]
    try:
        for m in layers:
            m.mode = mode
            if mode == "fixed":
                with torch.no_grad():
                    m._fixed_weight = m.sample_weight()
        yield model
    finally:
        for m, (old_mode, old_w) in zip(layers, saved, strict=True):
            m.mode, m._fixed_weight = old_mode, old_w


def kl(
    model: nn.Module,
    kernel_subsample: int | None = None,
    generator: torch.Generator | None = None,
    indices: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum of every variational layer's KL term (or auxiliary bound), a differentiable scalar.

    ``kernel_subsample = m``: per layer an unbiased estimate from m uniformly drawn kernels
    rescaled by n / m (layers with at most m kernels are computed exactly). ``indices``:
    ``{layer name: (m,) kernel indices}`` to use instead of drawing (see
    :func:`draw_kernel_indices`); layers not named are computed exactly.
    """
    total = None
    for name, layer in bayes_layers(model):
        if indices is not None:
            term = layer.kl(index=indices.get(name))
        else:
            term = layer.kl(kernel_subsample, generator)
        total = term if total is None else total + term
    if total is None:
        p = next(iter(model.parameters()), None)
        return torch.zeros(()) if p is None else p.new_zeros(())
    return total


def draw_kernel_indices(
    model: nn.Module,
    kernel_subsample: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Per variational layer with more than ``kernel_subsample`` kernels, a uniform draw of that
    many kernel indices without replacement: ``{layer name: (m,) LongTensor}``.

    By default drawn on the CPU with ``generator``. With ``device`` they are drawn there with
    the device's own generator (the first m of a random order, ``rand(n).argsort()``), with no
    host round trip, so a CUDA graph can record the draw.
    """
    _check_subsample(kernel_subsample)
    out = {}
    for name, layer in bayes_layers(model):
        n = layer.num_kernels()
        if layer.prior is not None and kernel_subsample < n:
            if device is None:
                out[name] = _subsample_index(n, kernel_subsample, generator)
            else:
                out[name] = torch.rand(n, device=device).argsort()[:kernel_subsample]
    return out


def _subsample_index(n: int, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """m of n kernel indices drawn uniformly without replacement (CPU LongTensor)."""
    _check_subsample(m)
    return torch.randperm(n, generator=generator)[:m]


def _check_subsample(m: int) -> None:
    if m < 1:
        raise DwpError(f"kernel_subsample must be >= 1, got {m}")


def elbo_loss(
    logits: torch.Tensor, targets: torch.Tensor, kl_term: torch.Tensor | float, n_train: int
) -> torch.Tensor:
    """Negative ELBO estimate in nats: (n_train / B) * sum_i CE(logits_i, y_i) + KL.

    ``logits`` (B, C), ``targets`` (B,). The data term is rescaled to the full training set, so
    the estimate's expectation over random batches does not depend on the batch size B.
    """
    if logits.shape[0] != targets.shape[0]:
        raise DwpError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    nll = F.cross_entropy(logits, targets, reduction="sum")
    return nll * (n_train / logits.shape[0]) + kl_term


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 10,
    batch_size: int = 1000,
    mode: str = "fixed",
) -> torch.Tensor:
    """Predictive class probabilities (N, C): the mean of softmax outputs over weight samples.

    ``mode="fixed"`` (default) draws ``samples`` networks from q and runs all of ``x`` through
    each (a true ensemble); ``"lrt"``/``"sample"`` redraw noise per batch; ``"mean"`` uses the
    posterior mean once. ``x`` (N, ...) is moved to the model's device in batches.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_draws = 1 if mode == "mean" or not bayes_layers(model) else samples
    total = None
    try:
        for _ in range(n_draws):
            with sampling(model, mode):
                probs = torch.cat([
                    F.softmax(model(x[i : i + batch_size].to(device)).float(), dim=-1)
                    for i in range(0, x.shape[0], batch_size)
                ])
            total = probs if total is None else total + probs
    finally:
        model.train(was_training)
    return total / n_draws


# -- conversion ----------------------------------------------------------------------------
PriorSpec = KernelPrior | Mapping[Any, KernelPrior]


def _lookup(priors: Mapping[Any, KernelPrior], name: str, ksize: tuple[int, int]) -> Any:
    short = name.rsplit(".", 1)[-1]
    candidates: list[Any] = [name, short, ksize, f"{ksize[0]}x{ksize[1]}"]
    if ksize[0] == ksize[1]:
        candidates += [ksize[0], str(ksize[0])]
    for key in candidates:
        if key in priors:
            return key
    return None


def bayesianize(
    model: nn.Module,
    priors: PriorSpec,
    *,
    init: str = "xavier",
    log_sigma2_init: float = -10.0,
    freeze_reverse: bool = False,
    generator: torch.Generator | None = None,
    posterior: str = "gaussian",
    alpha_logit_init: float = -2.0,
    conv_impl: str = "mixed",
) -> list[dict[str, Any]]:
    """Replace ``nn.Conv2d`` layers of ``model`` (in place) by ``BayesConv2d`` with a prior each.

    ``priors`` is one ``KernelPrior`` for every conv layer, or a mapping whose keys are layer
    names (full, e.g. ``"features.conv1"``, or last part ``"conv1"``), or kernel sizes (``7``,
    ``"7"``, ``(7, 7)``, ``"7x7"``); the first match in that order wins. Conv layers with no match
    and all other layers (e.g. the linear classifier, as in the paper) stay deterministic.
    Stride / padding / dilation / groups / padding_mode / bias / non-square kernels are copied.

    ``init``: posterior means from ``"xavier"`` (normal), ``"prior"`` (a sample of the layer's
    prior; needs ``prior.sample``), ``"prior-mean"`` (for latent-variable priors such as
    ``KernelVAE``: the decoder mean E[w | z] at z ~ p(z), without the decoder noise, as the
    paper's code initialises its DWP models) or ``"copy"`` (the conv's current weights). Biases
    are copied.
    ``posterior``: ``"gaussian"`` (free log sigma^2, from ``log_sigma2_init``) or
    ``"truncated-alpha"`` (sigma^2 = sigmoid(a) mu^2, a from ``alpha_logit_init``; see
    :class:`BayesConv2d`).
    ``conv_impl``: how the new layers compute their convolutions (see
    :meth:`BayesConv2d.set_conv_impl`; results agree up to float rounding).

    Returns one record per conv layer: ``{"layer", "kernel_size", "prior", "matched_by",
    "bayesian"}``. Raises ``DwpError`` for a mapping key that matched no layer. Variational
    layers already in ``model`` (and the modules inside them) are left as they are, so calls
    with one layer each can give layers different ``init`` / ``posterior``.
    """
    if init not in INITS:
        raise DwpError(f"unknown init {init!r}: use one of {', '.join(INITS)}")
    if init == "prior-mean":
        explicit = [p for p in (priors.values() if isinstance(priors, Mapping) else [priors])
                    if p.explicit]
        if explicit:
            raise DwpError(
                f"init 'prior-mean' needs latent-variable priors (the deep weight prior), not "
                f"{', '.join(sorted({p.family for p in explicit}))}: use init 'prior' or 'xavier'"
            )
    # convs inside an existing variational layer (its prior's VAE, its reverse model) are not
    # the model's own: a second call must neither report nor replace them
    inner = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, _BayesLayer))
    convs = [(n, m) for n, m in model.named_modules()
             if type(m) is nn.Conv2d and not n.startswith(inner)]
    report: list[dict[str, Any]] = []
    used: set[Any] = set()
    for name, conv in convs:
        ksize = tuple(conv.kernel_size)
        if isinstance(priors, KernelPrior):
            prior, key = priors, "all"
        else:
            key = _lookup(priors, name, ksize)
            prior = None if key is None else priors[key]
            used.add(key)
        rec = {"layer": name, "kernel_size": list(ksize), "prior": None, "matched_by": key,
               "bayesian": prior is not None}
        report.append(rec)
        if prior is None:
            continue
        rec["prior"] = prior.family
        layer = BayesConv2d(
            conv.in_channels, conv.out_channels, ksize, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, prior=None,
            log_sigma2_init=log_sigma2_init, freeze_reverse=freeze_reverse,
            posterior=posterior, alpha_logit_init=alpha_logit_init, conv_impl=conv_impl,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        layer.set_prior(prior)
        with torch.no_grad():
            if init == "copy":
                layer.weight_mu.copy_(conv.weight)
            elif init in ("prior", "prior-mean"):
                n = layer.weight_mu[..., 0, 0].numel()
                kw = {"noise": False} if init == "prior-mean" else {}
                w = prior.sample(n, kernel_size=ksize[0], generator=generator, **kw)
                layer.weight_mu.copy_(w.reshape(layer.weight_mu.shape))
            else:
                fan_in = layer.weight_mu[0].numel()
                fan_out = layer.weight_mu.shape[0] * ksize[0] * ksize[1] // conv.groups
                std = math.sqrt(2.0 / (fan_in + fan_out))
                layer.weight_mu.normal_(0.0, std, generator=generator)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        _set_submodule(model, name, layer)
    if not isinstance(priors, KernelPrior):
        unused = [k for k in priors if k not in used]
        if unused:
            names = ", ".join(f"{n} ({tuple(m.kernel_size)})" for n, m in convs) or "none"
            raise DwpError(
                f"prior keys {unused} match no Conv2d layer of the model; its conv layers are: "
                f"{names}"
            )
    return report


def set_conv_impl_(model: nn.Module, conv_impl: str) -> nn.Module:
    """Set how every :class:`BayesConv2d` of ``model`` computes its convolutions (see
    :meth:`BayesConv2d.set_conv_impl`), in place. Returns ``model``."""
    for m in model.modules():
        if isinstance(m, BayesConv2d):
            m.set_conv_impl(conv_impl)
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def format_report(report: list[dict[str, Any]]) -> str:
    """One line per conv layer: which prior it got (or that it stayed deterministic)."""
    lines = []
    for r in report:
        k = "x".join(str(s) for s in r["kernel_size"])
        what = f"prior {r['prior']} (matched by {r['matched_by']!r})" if r["bayesian"] else (
            "deterministic (no prior matched)")
        lines.append(f"{r['layer']} [{k}]: {what}")
    return "\n".join(lines)
