"""The diffusion process, defined once: configs and a float64 numpy reference.

Both frameworks build on this module (as diffusers' torch and Flax schedulers share one
config): `see3d_jax` and `see3d_torch` import these dataclasses as they are, compute the same
formulas on their own arrays, and are tested against the numpy functions below, which are
written for clarity and evaluated in float64 (the reference, not a fast path).

Forward process on the table abar_t = `alphas_cumprod(config)[t]`:

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                      (add_noise)
    v_t = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0                       (velocity)

The visual condition's schedules (SPEC.md section 2): t' = `condition_timestep(t)` (released:
t // 5) and W_t = `mixture_weight(t)` (released: piecewise on t'). The DDIM timestep lists of
diffusers' three spacings and of the authors' released "trailing" loop are `ddim_timesteps`
and `released_timesteps`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal

import numpy as np

BetaSchedule = Literal["scaled_linear", "linear", "cosine"]
BETA_SCHEDULES = ("scaled_linear", "linear", "cosine")
PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TimestepSpacing = Literal["leading", "trailing", "linspace"]
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
ConditionVariant = Literal["time_dependent", "masked", "posed_warp"]
CONDITION_VARIANTS = ("time_dependent", "masked", "posed_warp")
DIFFUSERS_BETA_NAMES = {"scaled_linear": "scaled_linear", "linear": "linear", "cosine": "squaredcos_cap_v2"}


# --- the noise schedule ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """How to build the beta table (names and meanings as in diffusers' scheduler configs).

    beta_schedule: "scaled_linear" (linear in sqrt(beta), Stable Diffusion), "linear" (DDPM) or
        "cosine" (Nichol & Dhariwal's squared-cosine abar, betas capped at 0.999).
    rescale_zero_terminal_snr: shift/scale sqrt(abar) so that abar_{T-1} = 0 exactly
        (Lin et al. 2023, Algorithm 1); the released See3D sampler uses it.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: BetaSchedule = "scaled_linear"
    rescale_zero_terminal_snr: bool = False

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule: expected 'scaled_linear', 'linear' or 'cosine', got {self.beta_schedule!r}"
            )
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps: expected >= 2, got {self.num_train_timesteps}")

    @classmethod
    def see3d(cls) -> "ScheduleConfig":
        """The schedule the released See3D weights expect (SPEC.md section 2)."""
        return cls(rescale_zero_terminal_snr=True)

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "ScheduleConfig":
        """Read a diffusers `scheduler_config.json` dictionary (unknown keys are ignored)."""
        if config.get("trained_betas") is not None:
            raise ValueError("scheduler config: 'trained_betas' is not supported; expected a named beta_schedule")
        schedule = config.get("beta_schedule", "linear")
        if schedule == "squaredcos_cap_v2":
            schedule = "cosine"
        return cls(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            beta_start=float(config.get("beta_start", 0.0001)),
            beta_end=float(config.get("beta_end", 0.02)),
            beta_schedule=schedule,
            rescale_zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", False)),
        )

    def to_diffusers_kwargs(self) -> dict:
        """The `DDIMScheduler` keyword arguments of this schedule."""
        return dict(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=DIFFUSERS_BETA_NAMES[self.beta_schedule],
            rescale_betas_zero_snr=self.rescale_zero_terminal_snr,
        )


def beta_table(config: ScheduleConfig) -> np.ndarray:
    """The betas [T] of `config` as float64 (the exact table both frameworks store)."""
    T = config.num_train_timesteps
    if config.beta_schedule == "scaled_linear":
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=np.float64) ** 2
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, T, dtype=np.float64)
    else:  # cosine
        def abar(s):
            return np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        steps = np.arange(T, dtype=np.float64)
        betas = np.minimum(1.0 - abar((steps + 1) / T) / abar(steps / T), 0.999)
    if config.rescale_zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas so the last timestep has zero SNR (abar_{T-1} = 0) and abar_0 is unchanged.

    Works on sqrt(abar): subtract its last value, then scale so the first value is restored.
    """
    sqrt_abar = np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def alphas_cumprod(config: ScheduleConfig) -> np.ndarray:
    """abar_t [T] of `config`, float64."""
    return np.cumprod(1.0 - beta_table(config))


def _coefficients(abar_table: np.ndarray, t, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    abar = np.asarray(abar_table, np.float64)[np.asarray(t, np.int64)]
    shape = abar.shape + (1,) * (np.ndim(like) - abar.ndim)
    return np.sqrt(abar).reshape(shape), np.sqrt(1.0 - abar).reshape(shape)


def add_noise(abar_table: np.ndarray, x0, noise, t) -> np.ndarray:
    """Reference x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (float64; t int [B] or scalar)."""
    a, s = _coefficients(abar_table, t, x0)
    return a * np.asarray(x0, np.float64) + s * np.asarray(noise, np.float64)


def velocity(abar_table: np.ndarray, x0, noise, t) -> np.ndarray:
    """Reference v_t = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (float64)."""
    a, s = _coefficients(abar_table, t, x0)
    return a * np.asarray(noise, np.float64) - s * np.asarray(x0, np.float64)


def split_prediction(abar_table: np.ndarray, x_t, t, model_output, prediction_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference (x0, eps) from a model output at timestep t (float64).

    epsilon:      x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar)
    v_prediction: x0 = sqrt(abar) x_t - sqrt(1-abar) v,  eps = sqrt(abar) v + sqrt(1-abar) x_t
    sample:       eps = (x_t - sqrt(abar) x0) / sqrt(1-abar)
    """
    a, s = _coefficients(abar_table, t, x_t)
    x_t, out = np.asarray(x_t, np.float64), np.asarray(model_output, np.float64)
    if prediction_type == "epsilon":
        return (x_t - s * out) / a, out
    if prediction_type == "v_prediction":
        return a * x_t - s * out, a * out + s * x_t
    if prediction_type == "sample":
        return out, (x_t - a * out) / s
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")


def split_prediction_rounding_bound(abar_table: np.ndarray, x_t, t, model_output, prediction_type: str, unit_roundoff: float):
    """Elementwise bounds (x0, eps) on the rounding error of `split_prediction` evaluated in a
    precision with `unit_roundoff` (2**-24 for float32) on an abar table stored in it.

    Each output is (p X - q Y) / r: rounding X, Y, p, q, the product, the difference and the
    division adds at most a few units of |p X| + |q Y| before the division by r, so the error is
    c u (|p X| + |q Y|) / r with c = 8 covering those operations (and a fused multiply-add).
    This is what makes epsilon's x0 ill-conditioned near zero terminal SNR: r = sqrt(abar_998)
    ~ 4e-4 multiplies float32 rounding of |x_t| ~ 3 by ~2300.
    """
    a, s = _coefficients(abar_table, t, x_t)
    x_t, out = np.abs(np.asarray(x_t, np.float64)), np.abs(np.asarray(model_output, np.float64))
    c = 8.0 * unit_roundoff
    if prediction_type == "epsilon":
        return c * (x_t + s * out) / a, c * out
    if prediction_type == "v_prediction":
        return c * (a * x_t + s * out), c * (a * out + s * x_t)
    if prediction_type == "sample":
        return c * out, c * (x_t + a * out) / s
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")


# --- the DDIM sampler -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DDIMConfig:
    """The sampler. Defaults follow the released base model (SPEC.md section 2): 50 trailing
    steps, eta 0, v-prediction, guidance 2.0. Read `prediction_type` from the UNet config.

    set_alpha_to_one: abar used after the last step (t_prev < 0): 1.0 if True, else abar_0.
    steps_offset: added to "leading" timesteps (SD configs use 1).
    clip_sample: clip x0_hat to [-clip_sample, clip_sample], None to not clip.
    released_timesteps: iterate over the authors' list (`released_timesteps`) instead of the
        scheduler's own (their pipeline does so when the released scheduler config holds
        `timestep_scaling: "trailing"`, SPEC.md section 2); each step still moves by T // n.
    """

    num_inference_steps: int = 50
    timestep_spacing: TimestepSpacing = "trailing"
    eta: float = 0.0
    prediction_type: PredictionType = "v_prediction"
    guidance_scale: float = 2.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    clip_sample: float | None = None
    released_timesteps: bool = False

    def __post_init__(self):
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"DDIMConfig.timestep_spacing: expected 'leading', 'trailing' or 'linspace', got {self.timestep_spacing!r}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"DDIMConfig.prediction_type: expected one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.num_inference_steps < 1:
            raise ValueError(f"DDIMConfig.num_inference_steps: expected >= 1, got {self.num_inference_steps}")
        if self.eta < 0:
            raise ValueError(f"DDIMConfig.eta: expected >= 0, got {self.eta}")

    @classmethod
    def from_scheduler(cls, scheduler: Any, **overrides) -> "DDIMConfig":
        """The scheduler-level fields read from a diffusers scheduler (anything with a `.config`
        mapping, or the mapping itself); the per-run fields (steps, eta, guidance) from
        `overrides` or the defaults."""
        c = getattr(scheduler, "config", scheduler)
        get = c.get if hasattr(c, "get") else lambda k, d=None: getattr(c, k, d)
        fields = dict(
            timestep_spacing=get("timestep_spacing", "leading"),
            prediction_type=get("prediction_type", "epsilon"),
            set_alpha_to_one=bool(get("set_alpha_to_one", True)),
            steps_offset=int(get("steps_offset", 0)),
            clip_sample=float(get("clip_sample_range", 1.0)) if get("clip_sample", True) else None,
        )
        fields.update(overrides)
        return cls(**fields)


def ddim_timesteps(config: DDIMConfig, num_train_timesteps: int = 1000) -> np.ndarray:
    """The decreasing int64 timesteps the sampler visits.

    Scheduler spacings as diffusers computes them: leading (1000, 50): 980, 960, ..., 0
    (+ steps_offset); trailing: 999, 979, ..., 19; linspace: round(linspace(0, T-1, n))
    reversed. With `config.released_timesteps`, the authors' list instead (`released_timesteps`).
    """
    n, T = config.num_inference_steps, num_train_timesteps
    if n > T:
        raise ValueError(f"DDIMConfig.num_inference_steps: {n} exceeds num_train_timesteps {T}")
    if config.released_timesteps:
        return released_timesteps(n, T)
    if config.timestep_spacing == "leading":
        steps = (np.arange(n) * (T // n)).round()[::-1] + config.steps_offset
    elif config.timestep_spacing == "trailing":
        steps = np.round(np.arange(T, 0, -T / n)) - 1
    else:
        steps = np.linspace(0, T - 1, n).round()[::-1]
    return steps.astype(np.int64)


def released_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """The authors' "trailing" loop: T-1, T-1-r, T-1-2r, ... while > 0, with r = (T-1) // n
    (53 steps for n = 50, 31 for n = 30). Their scheduler still moves each step by T // n."""
    last = num_train_timesteps - 1
    ratio = last // num_inference_steps
    if ratio < 1:
        raise ValueError(f"num_inference_steps: {num_inference_steps} exceeds num_train_timesteps - 1 = {last}")
    return np.arange(last, 0, -ratio, dtype=np.int64)


def num_sampler_steps(config: DDIMConfig, num_train_timesteps: int = 1000) -> int:
    """How many model evaluations (steps) the sampler makes: draw per-step noise for this many."""
    return len(ddim_timesteps(config, num_train_timesteps))


def previous_timesteps(timesteps: np.ndarray, config: DDIMConfig, num_train_timesteps: int = 1000) -> np.ndarray:
    """t_prev = t - T // n for each sampler timestep (negative means 'after the last step'),
    as diffusers' `DDIMScheduler.step` computes it whatever list the loop iterates over."""
    return (np.asarray(timesteps, np.int64) - num_train_timesteps // config.num_inference_steps).astype(np.int64)


# --- the visual condition's schedules ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Random irregular hole masks for target views (training).

    Each mask is the union of free-form strokes (polylines with round caps), axis-aligned boxes
    and rotated ellipses, grown or shrunk together until the hole fraction equals a coverage
    drawn uniformly from [min_coverage, max_coverage] (exactly, up to one pixel).

    A share `warp_like_fraction` of the masks look like forward-warp holes instead: many thin
    curves (disocclusion slivers along depth edges, one to a few pixels wide) and a strip along
    one image border (the part of a target the references never saw), at a low coverage drawn
    from [warp_like_min_coverage, warp_like_max_coverage]. The blob masks alone never show the
    model a one-pixel hole, the commonest hole of a warp (issue 18).
    """

    min_coverage: float = 0.15  # fraction of hole pixels (mask 0) per target view
    max_coverage: float = 0.75
    num_strokes: int = 3
    stroke_vertices: int = 5
    num_boxes: int = 2
    num_ellipses: int = 2
    shape_probability: float = 0.7  # each shape is present with this probability (the first stroke always)
    warp_like_fraction: float = 0.0  # share of masks shaped like warp holes (0: blobs only, as before)
    warp_like_min_coverage: float = 0.02
    warp_like_max_coverage: float = 0.15
    warp_like_curves: int = 6  # thin curves per warp-like mask (the border strip comes on top)

    def __post_init__(self):
        if not 0.0 <= self.min_coverage <= self.max_coverage <= 1.0:
            raise ValueError(
                f"MaskConfig coverage: expected 0 <= min_coverage <= max_coverage <= 1, "
                f"got {self.min_coverage}, {self.max_coverage}"
            )
        if not 0.0 <= self.warp_like_min_coverage <= self.warp_like_max_coverage <= 1.0:
            raise ValueError(
                f"MaskConfig warp-like coverage: expected 0 <= warp_like_min_coverage <= warp_like_max_coverage <= 1, "
                f"got {self.warp_like_min_coverage}, {self.warp_like_max_coverage}"
            )
        if not 0.0 <= self.warp_like_fraction <= 1.0 or self.warp_like_curves < 1:
            raise ValueError(
                f"MaskConfig: expected 0 <= warp_like_fraction <= 1 and warp_like_curves >= 1, "
                f"got {self.warp_like_fraction}, {self.warp_like_curves}"
            )
        if self.num_strokes < 1 or self.stroke_vertices < 2 or self.num_boxes < 0 or self.num_ellipses < 0:
            raise ValueError(
                "MaskConfig: expected num_strokes >= 1, stroke_vertices >= 2, num_boxes >= 0, num_ellipses >= 0"
            )


@dataclasses.dataclass(frozen=True)
class ConditionConfig:
    """Everything that defines the visual condition. Defaults reproduce the released weights.

    variant: "time_dependent" (MV-UnposeT: noise at t', mixture with x_t), "masked"
        (MV-UnposeM: the clean masked views, no noise, no mix) or "posed_warp" (MV-Posed: warps
        of the references with true depth and cameras replace the random masks in training).
    timestep_map: t' = f(t). "released": t // 5; "linear": floor(linear_ratio * t);
        "sqrt": floor(sqrt_scale * sqrt(t)) (the paper's example); or a callable taking integer
        t (an array of the framework in use) and returning t'. Always clipped to [0, t].
    weight: W as a function of t. "released": the piecewise schedule of SPEC.md section 2
        (on t' = t // 5, whatever timestep_map says); "exponential":
        exp(-exp_rate * (1 - t / (T-1))); or a callable on integer t; always clipped to [0, 1].
    min_references, max_references, masks: training only (how many of the N views of a sample
        are clean references, drawn per sample, at most N - 1; the random hole masks).
    posed_fraction: training only, with "time_dependent": the share of samples whose targets
        take the references' warps (posed data, as "posed_warp") instead of random masks: the
        paper's mixtures of posed 3D data into MV-UnposeT (Table 6: 10/20/60%).
    """

    variant: ConditionVariant = "time_dependent"
    timestep_map: str | Callable = "released"
    linear_ratio: float = 0.2
    sqrt_scale: float = 1.0
    weight: str | Callable = "released"
    exp_rate: float = 5.0
    num_train_timesteps: int = 1000
    min_references: int = 1
    max_references: int = 3
    masks: MaskConfig = MaskConfig()
    posed_fraction: float = 0.0

    def __post_init__(self):
        if isinstance(self.masks, dict):  # read from a config file
            object.__setattr__(self, "masks", MaskConfig(**self.masks))
        if not 0.0 <= self.posed_fraction <= 1.0:
            raise ValueError(f"ConditionConfig.posed_fraction: expected a share in [0, 1], got {self.posed_fraction}")
        if self.posed_fraction > 0 and self.variant != "time_dependent":
            raise ValueError(f"ConditionConfig.posed_fraction mixes posed warps into 'time_dependent' training; "
                             f"variant is {self.variant!r}")
        if self.variant not in CONDITION_VARIANTS:
            raise ValueError(f"ConditionConfig.variant: expected one of {CONDITION_VARIANTS}, got {self.variant!r}")
        if not callable(self.timestep_map) and self.timestep_map not in ("released", "linear", "sqrt"):
            raise ValueError(
                f"ConditionConfig.timestep_map: expected 'released', 'linear', 'sqrt' or a callable, got {self.timestep_map!r}"
            )
        if not callable(self.weight) and self.weight not in ("released", "exponential"):
            raise ValueError(
                f"ConditionConfig.weight: expected 'released', 'exponential' or a callable, got {self.weight!r}"
            )
        if not 1 <= self.min_references <= self.max_references:
            raise ValueError(
                f"ConditionConfig references: expected 1 <= min_references <= max_references, "
                f"got {self.min_references}, {self.max_references}"
            )


RELEASED_CONDITION = ConditionConfig()


def needs_pair_warps(config: ConditionConfig) -> bool:
    """Whether training with `config` reads posed clips' pair warps."""
    return config.variant == "posed_warp" or config.posed_fraction > 0


def condition_timestep(t, config: ConditionConfig = RELEASED_CONDITION) -> np.ndarray:
    """Reference t' = f(t), int64 (released: t // 5); named maps only."""
    t = np.asarray(t, np.int64)
    if callable(config.timestep_map):
        t_prime = np.asarray(config.timestep_map(t))
    elif config.timestep_map == "released":
        t_prime = t // 5
    elif config.timestep_map == "linear":
        t_prime = np.floor(config.linear_ratio * t.astype(np.float64))
    else:
        t_prime = np.floor(config.sqrt_scale * np.sqrt(t.astype(np.float64)))
    return np.clip(t_prime.astype(np.int64), 0, t)


def released_mixture_weight_of_t_prime(t_prime) -> np.ndarray:
    """The released W as a function of t' in [0, 199]: 1 - 0.2 (200 - t') / 140 for t' >= 60,
    else 0.8 exp(-0.075 (60 - t')), clipped to [0, 1] (float64)."""
    t_prime = np.asarray(t_prime, np.float64)
    w = np.where(t_prime >= 60.0, 1.0 - 0.2 * (200.0 - t_prime) / 140.0, 0.8 * np.exp(-0.075 * (60.0 - t_prime)))
    return np.clip(w, 0.0, 1.0)


def mixture_weight(t, config: ConditionConfig = RELEASED_CONDITION) -> np.ndarray:
    """Reference W_t in [0, 1] (float64). Released: 999 -> 0.9986, 500 -> 0.857, 300 -> 0.800,
    250 -> 0.378, 200 -> 0.179, 100 -> 0.040, 0 -> 0.0089."""
    t = np.asarray(t, np.int64)
    if callable(config.weight):
        w = np.asarray(config.weight(t), np.float64)
    elif config.weight == "released":
        w = released_mixture_weight_of_t_prime(t // 5)
    else:
        w = np.exp(-config.exp_rate * (1.0 - t.astype(np.float64) / (config.num_train_timesteps - 1)))
    return np.clip(w, 0.0, 1.0)


def ddim_step(abar_table: np.ndarray, model_output, t: int, t_prev: int, x_t, config: DDIMConfig, noise=None):
    """Reference DDIM update from t to t_prev (Song et al. Eq. 12, as diffusers computes it),
    float64. Returns (x_prev, x0_hat). t_prev < 0 uses the final abar (1 if
    `config.set_alpha_to_one`, else abar_0).

        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
        sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
    """
    table = np.asarray(abar_table, np.float64)
    abar_t = table[t]
    abar_prev = table[t_prev] if t_prev >= 0 else (1.0 if config.set_alpha_to_one else table[0])
    x0_hat, eps_hat = split_prediction(table, x_t, t, model_output, config.prediction_type)
    if config.clip_sample is not None:
        x0_hat = np.clip(x0_hat, -config.clip_sample, config.clip_sample)  # eps_hat is kept, as diffusers does
    sigma = config.eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    x_prev = np.sqrt(abar_prev) * x0_hat + np.sqrt(1.0 - abar_prev - sigma**2) * eps_hat
    if config.eta > 0:
        x_prev = x_prev + sigma * np.asarray(noise, np.float64)
    return x_prev, x0_hat
