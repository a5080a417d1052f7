"""The demo data set's machines (``aekit.audio.synth``): each machine's fixed parameters drawn
from ``(seed, type, id)``, the per-clip random streams, and the signal helpers the sound
models are built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from aekit.errors import InputError

# Stable codes: they enter the seeds, so a type's clips do not depend on which others are asked for.
MACHINE_TYPES = ("fan", "pump", "valve", "slider")
_TYPE_CODE = {name: code for code, name in enumerate(MACHINE_TYPES)}
ANOMALY_KINDS = ("bearing", "imbalance", "drift", "rattle")
DEFAULT_SAMPLE_RATES = (16000, 22050, 44100)  # mixed, so featurization really resamples
_DOMAIN_STREAM = 3                    # SeedSequence word: a machine's target-domain shift
_TARGET_WORD = 1                      # appended to a target-domain clip's seed words

_MACHINE_STREAM = 0                   # SeedSequence words: machine parameters ...
_LABEL_STREAM = {False: 1, True: 2}   # ... normal clips, anomalous clips
_LEVEL_DB = (-28.0, -22.0)            # machine RMS level, dBFS; clips add +-6 dB
_CLIP_GAIN_DB = 6.0
_SPEED_SPREAD = 0.04                  # per-clip speed: +-4 %
_PEAK = 0.98                          # headroom before 16-bit conversion

TWO_PI = 2.0 * np.pi


# --------------------------------------------------------------------------- machines

@dataclass(frozen=True)
class Machine:
    """One machine: its identity, recording format, level, stereo mix and sound-model parameters."""

    machine_type: str
    index: int
    sample_rate: int
    channels: int
    level_db: float
    params: dict = field(repr=False)
    mix: dict = field(repr=False)     # part name -> per-channel gains
    delay: int = 0                    # samples by which channel 1 hears point sources later
    noise_corr: float = 1.0           # correlation of the two channels' diffuse noise
    seed: int = 0

    @property
    def name(self) -> str:
        """Directory name within the type: ``id_00``."""
        return f"id_{self.index:02d}"

    @property
    def key(self) -> str:
        """Globally unique machine id: ``fan_id_00``."""
        return f"{self.machine_type}_{self.name}"


def make_machine(seed: int, machine_type: str, index: int,
                 sample_rates: Sequence[int] = DEFAULT_SAMPLE_RATES) -> Machine:
    """The fixed parameters of machine ``index`` of ``machine_type``, drawn from (seed, type, index)."""
    if machine_type not in _TYPE_CODE:
        raise InputError(f"unknown machine type {machine_type!r}; choose from {', '.join(MACHINE_TYPES)}")
    code = _TYPE_CODE[machine_type]
    rng = np.random.default_rng(np.random.SeedSequence([seed, code, index, _MACHINE_STREAM]))
    # Rates and channel counts rotate with the machine number, so every type with as many ids
    # as rates has them all, and mono and stereo alternate: the mix is guaranteed, not likely.
    k = code + index + seed
    sample_rate = int(sample_rates[k % len(sample_rates)])
    channels = 1 + k % 2
    params = _PARAM_DRAWERS[machine_type](rng)
    params["floor_db"] = rng.uniform(-50.0, -38.0)       # broadband floor under the noise peak
    params["bearing_ratio"] = rng.uniform(3.0, 5.5)      # outer-race fault order (BPFO / shaft)
    params["bearing_res_hz"] = rng.uniform(2500.0, 6000.0)
    params["bearing_tau"] = rng.uniform(0.0004, 0.0012)
    level_db = rng.uniform(*_LEVEL_DB)
    parts = ("tone", "events", "anomaly", "noise")
    if channels == 2:
        # Two microphones: each part reaches them with its own gain (+-3 dB), point sources
        # arrive a few samples later at the second, diffuse noise is only partly correlated.
        mix = {p: np.array([1.0, 10 ** (rng.uniform(-3.0, 3.0) / 20)], dtype=np.float32) for p in parts}
        delay = int(rng.integers(1, 13))
        noise_corr = rng.uniform(0.5, 0.9)
    else:
        mix = {p: np.ones(1, dtype=np.float32) for p in parts}
        delay, noise_corr = 0, 1.0
    return Machine(machine_type, index, sample_rate, channels, level_db, params, mix, delay,
                   noise_corr, seed)


def clip_rng(seed: int, machine_type: str, index: int, anomaly: bool, number: int) -> np.random.Generator:
    """The generator of one clip: (seed, type, id, normal/anomaly, clip number); no global state."""
    return np.random.default_rng(np.random.SeedSequence(
        [seed, _TYPE_CODE[machine_type], index, _LABEL_STREAM[bool(anomaly)], number]))


def target_speed(seed: int, machine_type: str, index: int) -> float:
    """The target domain's running speed relative to the source domain's, drawn per machine
    from its own stream (the source machine's draws are untouched): 0.70-0.80 or 1.25-1.40,
    another operating point, so every rotating and cyclic component moves in frequency."""
    rng = np.random.default_rng(np.random.SeedSequence(
        [seed, _TYPE_CODE[machine_type], index, _DOMAIN_STREAM]))
    return float(rng.uniform(0.70, 0.80) if rng.random() < 0.5 else rng.uniform(1.25, 1.40))


def target_clip_rng(seed: int, machine_type: str, index: int, anomaly: bool,
                    number: int) -> np.random.Generator:
    """The generator of one target-domain clip: :func:`clip_rng`'s words plus one, so target
    clip k is not source clip k at another speed but a recording of its own."""
    return np.random.default_rng(np.random.SeedSequence(
        [seed, _TYPE_CODE[machine_type], index, _LABEL_STREAM[bool(anomaly)], number,
         _TARGET_WORD]))


def _lognormal_weights(rng, k: int, slope: tuple[float, float], spread: float) -> np.ndarray:
    """Harmonic amplitudes falling like k^-p, each with a random +-spread (log) deviation."""
    p = rng.uniform(*slope)
    return np.arange(1, k + 1) ** -p * np.exp(rng.normal(0.0, spread, k))


def _fan_params(rng) -> dict:
    return {
        "shaft_hz": rng.uniform(15.0, 40.0),
        "blades": int(rng.integers(3, 10)),
        "bp_weights": _lognormal_weights(rng, 8, (0.8, 1.6), 0.3),
        "shaft_weights": rng.uniform(0.03, 0.1, 2),
        "tone_db": rng.uniform(-8.0, 2.0),           # tonal RMS relative to airflow noise
        "noise_alpha": rng.uniform(0.3, 1.2),         # 1/f^alpha colour of the airflow
        "noise_lo": rng.uniform(40.0, 120.0),
        "noise_hi": rng.uniform(1500.0, 6000.0),
        "bp_am": rng.uniform(0.05, 0.25),             # blade-pass modulation of the airflow
        "turb_hz": rng.uniform(0.3, 3.0),             # slow turbulence modulation
        "turb_am": rng.uniform(0.05, 0.2),
        "wander": rng.uniform(0.002, 0.01),
    }


def _pump_params(rng) -> dict:
    vanes = int(rng.integers(3, 9))
    weights = _lognormal_weights(rng, 30, (0.4, 1.0), 0.5)
    weights[vanes - 1] *= rng.uniform(2.0, 4.0)
    weights[2 * vanes - 1] *= rng.uniform(1.2, 2.0)
    return {
        "shaft_hz": rng.uniform(20.0, 50.0),
        "weights": weights,
        "pulse_ratio": rng.uniform(0.05, 0.2),        # pulsation rate / shaft rate
        "pulse_depth": rng.uniform(0.15, 0.45),
        "pulse_sharp": rng.uniform(1.0, 4.0),
        "mains_hz": float(rng.choice([50.0, 60.0])),
        "hum": rng.uniform(0.05, 0.2),
        "noise_db": rng.uniform(-12.0, -4.0),         # flow noise relative to the tone
        "noise_alpha": rng.uniform(1.0, 2.0),
        "noise_lo": rng.uniform(20.0, 60.0),
        "noise_hi": rng.uniform(800.0, 3000.0),
        "wander": rng.uniform(0.002, 0.008),
    }


def _valve_params(rng) -> dict:
    def click():
        return {"freqs": rng.uniform(700.0, 5000.0, 2), "taus": rng.uniform(0.002, 0.012, 2),
                "mode_weights": rng.uniform(0.4, 1.0, 2), "burst": rng.uniform(0.002, 0.008)}
    return {
        "period": rng.uniform(0.35, 1.2),             # open/close cycle, seconds
        "duty": rng.uniform(0.3, 0.6),
        "jitter": rng.uniform(0.01, 0.04),
        "open_click": click(),
        "close_click": click(),
        "open_db": rng.uniform(6.0, 12.0),            # click peak over the floor's RMS
        "close_db": rng.uniform(8.0, 14.0),
        "flow_boost": rng.uniform(1.5, 4.0),          # flow noise swells while open
        "noise_alpha": rng.uniform(0.2, 0.9),
        "noise_lo": rng.uniform(100.0, 400.0),
        "noise_hi": rng.uniform(3000.0, 7000.0),
        "mains_hz": float(rng.choice([50.0, 60.0])),
        "buzz_db": rng.uniform(-24.0, -14.0),         # solenoid buzz while energised
        "shaft_hz": rng.uniform(24.0, 50.0),          # faint drive motor on the line
        "motor_weights": _lognormal_weights(rng, 4, (0.5, 1.2), 0.3),
        "motor_db": rng.uniform(-18.0, -10.0),
        "wander": rng.uniform(0.002, 0.01),
    }


def _slider_params(rng) -> dict:
    return {
        "period": rng.uniform(0.8, 2.2),              # stroke cycle, seconds
        "move_frac": rng.uniform(0.4, 0.7),           # share of the cycle spent moving
        "motor_hz": rng.uniform(250.0, 900.0),        # servo whine at full speed
        "motor_weights": _lognormal_weights(rng, 4, (0.7, 1.5), 0.3),
        "motor_db": rng.uniform(-10.0, -2.0),
        "shaft_hz": rng.uniform(15.0, 40.0),          # lead-screw rotation at full speed
        "friction_alpha": rng.uniform(0.0, 0.8),
        "friction_lo": rng.uniform(300.0, 1000.0),
        "friction_hi": rng.uniform(2500.0, 6000.0),
        "stick_hz": rng.uniform(20.0, 70.0),          # stick-slip roughness at full speed
        "stick_depth": rng.uniform(0.2, 0.6),
        "back_db": rng.uniform(-3.0, 3.0),            # return stroke louder or softer
        "knock_hz": rng.uniform(400.0, 2500.0),
        "knock_tau": rng.uniform(0.005, 0.02),
        "knock_db": rng.uniform(4.0, 10.0),
        "idle_db": rng.uniform(-26.0, -18.0),         # floor between strokes
        "wander": rng.uniform(0.002, 0.01),
    }


_PARAM_DRAWERS = {"fan": _fan_params, "pump": _pump_params, "valve": _valve_params,
                  "slider": _slider_params}


# --------------------------------------------------------------------------- signal helpers

def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT lengths that are quick."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35
            while q < n:
                q *= 2
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _unit_rms(x: np.ndarray) -> np.ndarray:
    r = _rms(x)
    return x / r if r > 0 else x


def _db_to_gain(value: float) -> float:
    return 10.0 ** (value / 20.0)


def _phase(freq_hz: np.ndarray, sr: int, phi0: float = 0.0) -> np.ndarray:
    """Running phase (radians, float64) of an instantaneous frequency track."""
    return phi0 + np.cumsum(freq_hz, dtype=np.float64) * (TWO_PI / sr)


def _wrap(phase: np.ndarray, block: int = 1024) -> np.ndarray:
    """Phase made small enough for float32 (where sin/cos are fast) without losing precision.

    Whole turns are removed per block of samples: cheaper than a per-sample modulo, and the
    remainder stays within a few hundred radians (float32 error ~1e-5 rad).
    """
    turns = np.floor(phase[::block] * (1.0 / TWO_PI)) * TWO_PI
    return (phase - np.repeat(turns, block)[:len(phase)]).astype(np.float32)


def _phasor(phase: np.ndarray) -> np.ndarray:
    """exp(i * phase) as complex64."""
    ph = _wrap(phase)
    z = np.empty(len(ph), dtype=np.complex64)
    z.real = np.cos(ph)
    z.imag = np.sin(ph)
    return z


def _harmonics(z: np.ndarray, weights: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """sum_k w_k sin(k*phase + phi_k), k = 1..K, by Horner's rule in z = exp(i*phase)."""
    if len(weights) == 0 or not np.any(weights):
        return np.zeros(len(z), np.float32)
    c = (weights * np.exp(1j * phases)).astype(np.complex64)
    acc = np.full(len(z), c[-1], dtype=np.complex64)
    for ck in c[-2::-1]:
        acc *= z
        acc += ck
    acc *= z
    return acc.imag.astype(np.float32)


def _below_nyquist(weights: np.ndarray, f_max: float, sr: int) -> np.ndarray:
    """Drop harmonics that would alias (k * f_max above 0.45 sr)."""
    k = np.arange(1, len(weights) + 1)
    return np.where(k * f_max < 0.45 * sr, weights, 0.0)


def _band_shape(alpha: float, f_lo: float, f_hi: float, order: int = 2,
                floor_db: float | None = None) -> Callable:
    """Magnitude response: 1/f^(alpha/2) colour between a high-pass at f_lo and a low-pass at f_hi.

    ``floor_db``: a flat floor that many dB below the peak (microphone and room noise), so no
    band of a recording is ever empty.
    """
    def shape(f):
        f = np.maximum(f, 1.0).astype(np.float32)
        lo = (f / f_lo) ** order
        mag = f ** (-alpha / 2) * np.sqrt(lo / (1 + lo) / (1 + (f / f_hi) ** (2 * order)))
        if floor_db is not None:
            mag = mag / mag.max() + np.float32(_db_to_gain(floor_db))
        return mag
    return shape


def _noise(rng, n: int, sr: int, shape: Callable, channels: int = 1, corr: float = 1.0) -> np.ndarray:
    """[channels, n] Gaussian noise with magnitude spectrum ``shape(f)``, unit RMS per channel.

    Channels share a common part (correlation ``corr``) plus their own independent part.
    """
    length = _fast_len(n)
    f = np.fft.rfftfreq(length, 1.0 / sr)
    mag = shape(f).astype(np.float32)
    mag[0] = 0.0

    def spectrum(rows):
        # Independent uniform real and imaginary parts (pairs of float32 viewed as complex64):
        # ten times cheaper than normals, and every time sample, a sum over thousands of
        # bins, is Gaussian all the same.
        return (rng.random((rows, 2 * len(f)), dtype=np.float32) - np.float32(0.5)).view(np.complex64)

    spec = spectrum(channels)
    if channels > 1:
        # Channel c > 0 = corr * channel 0 + sqrt(1 - corr^2) * its own: correlation ``corr``.
        spec[1:] = corr * spec[0] + float(np.sqrt(1.0 - corr * corr)) * spec[1:]
    spec *= mag
    x = np.fft.irfft(spec, length, axis=-1)[:, :n].astype(np.float32)
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=1, keepdims=True))
    return x / np.maximum(rms, 1e-12).astype(np.float32)


def _crossings(cycles: np.ndarray) -> np.ndarray:
    """Sample indices where a running cycle count passes an integer."""
    return np.flatnonzero(np.diff(np.floor(cycles))) + 1


def _damped_modes(sr: int, freqs, taus, weights, length_taus: float = 6.0) -> np.ndarray:
    """A click's ringing: sum of decaying sinusoids, peak-normalised."""
    freqs = np.minimum(np.asarray(freqs, dtype=np.float64), 0.45 * sr)
    t = np.arange(int(length_taus * max(taus) * sr) + 1) / sr
    h = sum(w * np.exp(-t / tau) * np.sin(TWO_PI * f * t) for f, tau, w in zip(freqs, taus, weights))
    return (h / max(np.max(np.abs(h)), 1e-12)).astype(np.float32)


def _place(out: np.ndarray, kernel: np.ndarray, at: int, gain: float) -> None:
    """Add ``gain * kernel`` into ``out`` starting at sample ``at`` (truncated at the end)."""
    if at >= len(out) or at < 0:
        return
    m = min(len(kernel), len(out) - at)
    out[at:at + m] += gain * kernel[:m]


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution by FFT, truncated to len(x)."""
    length = _fast_len(len(x) + len(h))
    y = np.fft.irfft(np.fft.rfft(x, length) * np.fft.rfft(h, length), length)
    return y[:len(x)].astype(np.float32)


def _speed_profile(rng, p: dict, n: int, sr: int, drift: bool) -> np.ndarray:
    """Per-sample speed factor: the clip's speed (+-4 %), slow wander, and for ``drift`` a sweep."""
    speed = 1.0 + rng.uniform(-_SPEED_SPREAD, _SPEED_SPREAD)
    t = np.arange(n) / sr
    freqs = rng.uniform(0.05, 0.6, 3)
    phases = rng.uniform(0.0, TWO_PI, 3)
    # Computed on a coarse grid: it changes slowly.
    tc = t[::64]
    wander = sum(np.sin(TWO_PI * f * tc + ph) for f, ph in zip(freqs, phases)) * (p["wander"] / 1.5)
    s = speed * (1.0 + np.interp(t, tc, wander))
    if drift:
        amount = rng.uniform(0.08, 0.18) * rng.choice([-1.0, 1.0])
        u = t / max(t[-1], 1e-9) if n > 1 else t
        sweep = u if rng.random() < 0.5 else np.sin(np.pi * u)   # ramp, or away and back
        s = s * (1.0 + amount * sweep)
    return s


@dataclass
class _Parts:
    """A rendered normal clip before mixing: mono point sources, diffuse noise, the main shaft."""

    mono: dict            # name -> [n] float32 ("tone": rotating harmonics, "events": clicks...)
    noise: np.ndarray     # [channels, n] float32
    shaft_phase: np.ndarray   # [n] radians of the main rotating shaft
    shaft_hz: np.ndarray      # [n] its instantaneous rate (0 while stopped)
