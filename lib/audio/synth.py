"""A demo data set made on the spot: machine-like recordings as WAV/FLAC files plus labels.csv.

No data can be downloaded at run time, so the toolkit makes its own. Four machine types,
each with its own physically motivated sound model:

- fan: blade-pass tone and its harmonics over a weak shaft tone, broadband airflow noise
  amplitude-modulated by the passing blades and by slow turbulence;
- pump: low shaft fundamental with strong harmonics (vane-pass boosted), pulsating flow,
  mains hum, brownish flow noise;
- valve: periodic open/close clicks (damped structural resonances plus a short noise burst)
  on a flow-noise floor that swells while the valve is open, solenoid buzz, a faint drive motor;
- slider: periodic strokes with a velocity profile: friction noise with stick-slip roughness,
  servo whine whose pitch follows the velocity, an end-stop knock.

Each machine id has fixed parameters (fundamental, harmonic weights, noise colour, modulation
rate, sample rate, channel count and stereo mix) drawn from ``(seed, type, id)``; each clip
varies speed (+-4 %), level (+-6 dB) and phase. Anomalous clips add one of:

- ``bearing``: periodic short decaying impulses at a bearing fault frequency (a fixed multiple
  of the shaft rate) ringing a high structural resonance, modulated by the load zone;
- ``imbalance``: a boosted 1x shaft component and 1x sidebands around every rotating harmonic;
- ``drift``: the fundamental (and the machine's cycle rate) sweeps during the clip;
- ``rattle``: random clusters of short broadband bursts.

The anomaly is mixed well below the machine's own level and the clip is then normalised to the
same RMS a normal clip would have, so loudness alone does not give it away.

Layout: ``out_dir/<type>/<id_NN>/<normal|anomaly>_<NNNN>.<wav|flac>`` (16-bit PCM) and
``out_dir/labels.csv`` with columns ``id,machine_type,machine_id,anomaly,anomaly_kind,
sample_rate,channels``; ``id`` is the file's path relative to ``out_dir`` without extension
(``fan/id_00/normal_0003``), the id ``ae-featurize out_dir`` gives it.

Layout ``dcase2020`` names the same clips as DCASE 2020 Task 2 names its files:
``out_dir/<type>/train/normal_id_NN_<8 digits>`` (normal clips only) and
``out_dir/<type>/test/<normal|anomaly>_id_NN_<8 digits>`` (every anomalous clip and as many
normal ones, keeping at least one normal clip for training), numbered from 0 in each folder
for each machine. labels.csv then has the columns ``ae-labels --preset dcase2020`` gives
(``machine_id`` is the number as text, ``00``; ``machine`` is ``fan_id_00``), followed by
``anomaly_kind,sample_rate,channels``. Normal clip k of a machine (train first, then test)
and anomalous clip k are the clips of the default layout with those numbers.

Layout ``dcase2023`` makes the DCASE 2021-2025 domain-shift protocol's data: machine id NN is
``section_NN``, recorded in a source domain and in a target domain running at another speed
(:func:`target_speed`: 70-80 % or 125-140 %, drawn per machine; attribute ``spd_<percent>``,
100 in the source domain). ``out_dir/<type>/train/section_NN_<domain>_train_normal_<4
digits>_spd_<P>`` holds the training clips, :data:`TARGET_TRAIN_RATIO` (DCASE's 10 of 1000,
at least one while a source clip is left) in the target domain; ``out_dir/<type>/test/
section_NN_<domain>_test_<normal|anomaly>_<4 digits>_spd_<P>`` every anomalous clip and as many
normal ones (as dcase2020), half of each in each domain (the odd one in the source). Clips are
numbered from 0 per section, domain, split and label. labels.csv has the columns
``ae-labels --preset dcase2021`` gives (section, machine ``fan_section_00``, domain, split,
label, anomaly, clip, attributes, spd), then ``anomaly_kind,sample_rate,channels``. Source
clips are the default layout's clips with those numbers; a target clip has its own generator
(:func:`target_clip_rng`).

Everything is deterministic: each machine and each clip has its own numpy Generator seeded
through :class:`numpy.random.SeedSequence` from ``(seed, type, id, label, clip number)``, so
clip ``fan/id_00/normal_0003`` is the same whatever other types, ids or counts are asked for,
and a re-run rewrites identical bytes. Every file is written atomically.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from aekit.errors import InputError
from aekit.system.fileio import atomic_path

LOG = logging.getLogger(__name__)

# Stable codes: they enter the seeds, so a type's clips do not depend on which others are asked for.
MACHINE_TYPES = ("fan", "pump", "valve", "slider")
_TYPE_CODE = {name: code for code, name in enumerate(MACHINE_TYPES)}
ANOMALY_KINDS = ("bearing", "imbalance", "drift", "rattle")
FORMATS = ("wav", "flac")
_SUBTYPE_FORMAT = {"wav": "WAV", "flac": "FLAC"}

# Defaults, in one place (the command reuses them).
DEFAULT_CLIPS_PER_MACHINE = 25        # 4 types x 3 ids x 25 = 300 clips: a few seconds to make
DEFAULT_IDS_PER_TYPE = 3              # enough machines for per-machine and cross-machine splits
DEFAULT_ANOMALY_FRACTION = 0.2        # 5 of 25 clips per machine: every kind shows up
DEFAULT_DURATION = 6.25               # seconds: 100,000 samples at 16 kHz, the tutorial's length
DEFAULT_SAMPLE_RATES = (16000, 22050, 44100)  # mixed, so featurization really resamples
DEFAULT_SEED = 0
LABELS_NAME = "labels.csv"
LABEL_COLUMNS = ("id", "machine_type", "machine_id", "anomaly", "anomaly_kind",
                 "sample_rate", "channels")
LAYOUTS = ("default", "dcase2020", "dcase2023")
# dcase2020: the columns ae-labels --preset dcase2020 parses from the ids, then what only we know.
DCASE2020_LABEL_COLUMNS = ("id", "machine_type", "machine_id", "machine", "split", "label",
                           "anomaly", "clip", "anomaly_kind", "sample_rate", "channels")
# dcase2023: the columns ae-labels --preset dcase2021 parses from the ids (the attribute spd
# among them), then what only we know.
DCASE2023_LABEL_COLUMNS = ("id", "machine_type", "section", "machine", "domain", "split", "label",
                           "anomaly", "clip", "attributes", "spd", "anomaly_kind", "sample_rate",
                           "channels")
#: DCASE 2021-2025 development sets: per section 990 source and 10 target training clips.
TARGET_TRAIN_RATIO = 10 / 1000
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


# --------------------------------------------------------------------------- sound models

def _fan(p, n, sr, s, rng, channels, corr) -> _Parts:
    shaft_hz = p["shaft_hz"] * s
    shaft_phase = _phase(shaft_hz, sr, rng.uniform(0, TWO_PI))
    z_bp = _phasor(p["blades"] * shaft_phase)
    bp_max = p["blades"] * float(shaft_hz.max())
    bp_w = _below_nyquist(p["bp_weights"], bp_max, sr)
    tone = _harmonics(z_bp, bp_w, rng.uniform(0, TWO_PI, len(bp_w)))
    tone += _harmonics(_phasor(shaft_phase), p["shaft_weights"] * bp_w[0],
                       rng.uniform(0, TWO_PI, 2))
    tone = _unit_rms(tone) * _db_to_gain(p["tone_db"])
    noise = _noise(rng, n, sr, _band_shape(p["noise_alpha"], p["noise_lo"], p["noise_hi"],
                                           floor_db=p["floor_db"]), channels, corr)
    t = np.arange(n) / sr
    am = (1.0 + p["bp_am"] * z_bp.real) * (
        1.0 + p["turb_am"] * np.sin(_wrap(TWO_PI * p["turb_hz"] * t + rng.uniform(0, TWO_PI))))
    return _Parts({"tone": tone}, noise * am.astype(np.float32), shaft_phase, shaft_hz)


def _pump(p, n, sr, s, rng, channels, corr) -> _Parts:
    shaft_hz = p["shaft_hz"] * s
    shaft_phase = _phase(shaft_hz, sr, rng.uniform(0, TWO_PI))
    weights = _below_nyquist(p["weights"], float(shaft_hz.max()), sr)
    tone = _unit_rms(_harmonics(_phasor(shaft_phase), weights, rng.uniform(0, TWO_PI, len(weights))))
    # Pulsating delivery: a sharpened slow cycle locked to the shaft.
    pulse = (0.5 + 0.5 * np.cos(_wrap(p["pulse_ratio"] * shaft_phase + rng.uniform(0, TWO_PI)))) ** p["pulse_sharp"]
    env = (1.0 - p["pulse_depth"] + 2.0 * p["pulse_depth"] * pulse).astype(np.float32)
    t = np.arange(n) / sr
    hum = _harmonics(_phasor(TWO_PI * 2 * p["mains_hz"] * t), np.array([1.0, 0.3, 0.1]),
                     rng.uniform(0, TWO_PI, 3))
    tone = tone * env + p["hum"] * hum
    noise = _noise(rng, n, sr, _band_shape(p["noise_alpha"], p["noise_lo"], p["noise_hi"],
                                           floor_db=p["floor_db"]), channels, corr)
    noise *= (_db_to_gain(p["noise_db"]) * (0.6 + 0.4 * env))
    return _Parts({"tone": tone}, noise, shaft_phase, shaft_hz)


def _click_kernel(rng, sr, c: dict) -> np.ndarray:
    """One open or close transient: structural ringing plus a short noise burst, this event's own."""
    freqs = c["freqs"] * (1.0 + rng.normal(0.0, 0.02, 2))
    ring = _damped_modes(sr, freqs, c["taus"], c["mode_weights"])
    nb = max(int(c["burst"] * sr), 2)
    burst = rng.standard_normal(nb).astype(np.float32) * np.exp(-np.arange(nb) / (nb / 4)).astype(np.float32)
    ring[:nb] += 0.5 * burst
    return ring


def _valve(p, n, sr, s, rng, channels, corr) -> _Parts:
    # Open at each whole cycle, close ``duty`` later; both jittered a little.
    cycles = (rng.uniform(0.0, 1.0) + np.cumsum(s / (p["period"] * sr))).astype(np.float32)
    # Open for the first ``duty`` of each cycle, with 15 ms linear ramps at the transitions.
    frac, duty = cycles % np.float32(1.0), np.float32(p["duty"])
    inside = np.minimum(frac, duty - frac)
    outside = -np.minimum(frac - duty, np.float32(1.0) - frac)
    ramp = np.float32(0.015 / p["period"])
    gate = np.clip(0.5 + np.where(frac < duty, inside, outside) / ramp, 0.0, 1.0).astype(np.float32)
    jitter = p["jitter"] * p["period"] * sr
    events = np.zeros(n, np.float32)
    for idx, c, level in ((_crossings(cycles), p["open_click"], p["open_db"]),
                          (_crossings(cycles - p["duty"]), p["close_click"], p["close_db"])):
        for i in idx:
            at = int(i + round(rng.normal(0.0, jitter)))
            _place(events, _click_kernel(rng, sr, c), at, _db_to_gain(level) * rng.uniform(0.8, 1.2))
    floor = _noise(rng, n, sr, _band_shape(p["noise_alpha"], p["noise_lo"], p["noise_hi"],
                                           floor_db=p["floor_db"]), channels, corr)
    floor *= (1.0 + p["flow_boost"] * gate) / (1.0 + p["flow_boost"] * p["duty"])
    t = np.arange(n) / sr
    buzz = _harmonics(_phasor(TWO_PI * 2 * p["mains_hz"] * t), np.array([1.0, 0.5, 0.25]),
                      rng.uniform(0, TWO_PI, 3))
    shaft_hz = p["shaft_hz"] * s
    shaft_phase = _phase(shaft_hz, sr, rng.uniform(0, TWO_PI))
    motor = _harmonics(_phasor(shaft_phase), p["motor_weights"], rng.uniform(0, TWO_PI, 4))
    tone = _unit_rms(motor) * _db_to_gain(p["motor_db"]) + _unit_rms(buzz) * gate * _db_to_gain(p["buzz_db"])
    return _Parts({"tone": tone, "events": events}, floor, shaft_phase, shaft_hz)


def _slider(p, n, sr, s, rng, channels, corr) -> _Parts:
    # Strokes: within each cycle the carriage moves for ``move_frac`` with a sin^2 velocity
    # profile, then rests; forward and return strokes alternate.
    start = rng.uniform(0.0, 1.0)
    span = n / (p["period"] * sr)
    if span < 1.0:   # a clip shorter than a cycle still catches part of a stroke
        start = rng.uniform(-0.5 * span, p["move_frac"]) % 1.0
    cycles = (start + np.cumsum(s / (p["period"] * sr))).astype(np.float32)   # a few dozen at most
    u = (cycles % 1.0) / np.float32(p["move_frac"])
    velocity = np.where(u < 1.0, np.sin((np.pi * np.minimum(u, 1.0)).astype(np.float32)) ** 2,
                        np.float32(0.0))
    back = (np.floor(cycles) % 2 == 1)
    stroke_gain = np.where(back, _db_to_gain(p["back_db"]), 1.0).astype(np.float32)
    # Servo whine, pitch and level following the velocity.
    motor_hz = p["motor_hz"] * velocity * s
    motor_w = _below_nyquist(p["motor_weights"], p["motor_hz"] * float(s.max()), sr)
    whine = _harmonics(_phasor(_phase(motor_hz, sr, rng.uniform(0, TWO_PI))), motor_w,
                       rng.uniform(0, TWO_PI, len(motor_w)))
    whine = whine * velocity * stroke_gain
    shaft_hz = p["shaft_hz"] * velocity * s
    shaft_phase = _phase(shaft_hz, sr, rng.uniform(0, TWO_PI))
    # End-stop knocks where a stroke ends.
    events = np.zeros(n, np.float32)
    knock = _damped_modes(sr, [p["knock_hz"], 2.7 * p["knock_hz"]], [p["knock_tau"], p["knock_tau"] / 3],
                          [1.0, 0.4])
    ends = np.flatnonzero(np.diff((u < 1.0).astype(np.int8)) == -1) + 1
    for i in ends:
        _place(events, knock, int(i), _db_to_gain(p["knock_db"]) * rng.uniform(0.7, 1.3) * stroke_gain[i - 1])
    # Friction: band noise while moving, roughened by stick-slip at a velocity-dependent rate.
    # At rest only the hall's noise remains, ``idle_db`` below full-speed friction.
    friction = _noise(rng, n, sr, _band_shape(p["friction_alpha"], p["friction_lo"], p["friction_hi"],
                                              floor_db=p["floor_db"]), channels, corr)
    stick = 1.0 + p["stick_depth"] * np.sin(_wrap(_phase(p["stick_hz"] * velocity * s, sr, rng.uniform(0, TWO_PI))))
    moving = (np.sqrt(velocity) * stick * stroke_gain + _db_to_gain(p["idle_db"])).astype(np.float32)
    noise = friction * moving
    tone = _unit_rms(whine) * _db_to_gain(p["motor_db"]) if np.any(whine) else whine
    return _Parts({"tone": tone, "events": events}, noise, shaft_phase, shaft_hz)


_MODELS = {"fan": _fan, "pump": _pump, "valve": _valve, "slider": _slider}


# --------------------------------------------------------------------------- anomalies

def _bearing(rng, m: Machine, parts: _Parts, n: int) -> np.ndarray:
    """Impulses at the bearing fault rate ringing a high resonance, load-zone modulated."""
    p, sr = m.params, m.sample_rate
    fault_hz = p["bearing_ratio"] * parts.shaft_hz
    cycles = rng.uniform(0.0, 1.0) + np.cumsum(fault_hz) / sr
    idx = _crossings(cycles)
    mean_hz = max(float(fault_hz.mean()), 1.0)
    idx = np.clip(idx + np.round(rng.normal(0.0, 0.01 * sr / mean_hz, len(idx))).astype(int), 0, n - 1)
    load = 1.0 + rng.uniform(0.0, 0.6) * np.cos(parts.shaft_phase[idx])
    amp = np.maximum(1.0 + 0.25 * rng.standard_normal(len(idx)), 0.2) * load
    impulses = np.zeros(n, np.float32)
    np.add.at(impulses, idx, amp.astype(np.float32))
    res = min(p["bearing_res_hz"], 0.4 * sr)
    kernel = _damped_modes(sr, [res], [p["bearing_tau"]], [1.0], length_taus=8.0)
    return _convolve(impulses, kernel)


def _rattle(rng, m: Machine, n: int) -> np.ndarray:
    """Random clusters of short broadband bursts (something loose)."""
    sr = m.sample_rate
    duration = n / sr
    count = max(2, int(rng.poisson(rng.uniform(2.0, 8.0) * duration)))
    env = np.zeros(n, np.float32)
    for start in rng.uniform(0.0, duration, count):
        t0 = start
        for _ in range(int(rng.integers(1, 5))):
            tau = rng.uniform(0.002, 0.015)
            length = int(5 * tau * sr) + 1
            decay = np.exp(-np.arange(length) / (tau * sr)).astype(np.float32)
            _place(env, decay, int(t0 * sr), float(rng.lognormal(0.0, 0.4)))
            t0 += rng.uniform(0.005, 0.025)
    carrier = _noise(rng, n, sr, _band_shape(rng.uniform(-0.5, 0.5), rng.uniform(200.0, 800.0),
                                             rng.uniform(4000.0, 10000.0)))[0]
    return carrier * env


def _band_powers(x: np.ndarray, sr: int, bands: int = 24) -> np.ndarray:
    """Power of ``x`` in log-spaced bands from 20 Hz to Nyquist."""
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    edges = np.searchsorted(f, np.geomspace(20.0, sr / 2, bands + 1))
    return np.add.reduceat(spec, edges[:-1])[: bands] + 1e-20


def _anomaly_gain(rng, normal: np.ndarray, anomaly: np.ndarray, sr: int,
                  excess_db: tuple[float, float], rms_db: tuple[float, float]) -> float:
    """Gain for ``anomaly`` so it is audible but not blatant next to ``normal``.

    In its strongest band (relative to the normal clip's own power there) it stands
    ``excess_db`` above the machine, and its RMS stays at most ``rms_db`` relative to the
    machine's: a high-frequency click on a low-frequency pump is not a 40 dB give-away, and a
    broadband one on a fan is not lost.
    """
    a_rms = _rms(anomaly)
    if a_rms == 0.0:
        return 0.0
    excess = np.max(_band_powers(anomaly, sr) / _band_powers(normal, sr))
    by_band = _db_to_gain(rng.uniform(*excess_db)) / np.sqrt(excess)
    by_rms = _rms(normal) * _db_to_gain(rng.uniform(*rms_db)) / a_rms
    return float(min(by_band, by_rms))


def _apply_anomaly(kind: str, rng, m: Machine, parts: _Parts, n: int) -> None:
    """Add the anomaly to ``parts`` in place, at a level below the machine's own."""
    sr = m.sample_rate
    normal = sum(parts.mono.values()) + parts.noise[0]
    if kind == "bearing":
        x = _bearing(rng, m, parts, n)
        parts.mono["anomaly"] = x * _anomaly_gain(rng, normal, x, sr, (8.0, 16.0), (-16.0, -6.0))
    elif kind == "rattle":
        x = _rattle(rng, m, n)
        parts.mono["anomaly"] = x * _anomaly_gain(rng, normal, x, sr, (8.0, 16.0), (-14.0, -4.0))
    elif kind == "imbalance":
        # A heavy spot: the 1x shaft component grows and every rotating harmonic is
        # amplitude-modulated at 1x, which puts sidebands at +-1x around each of them.
        phi = rng.uniform(0, TWO_PI)
        running = (parts.shaft_hz / max(float(parts.shaft_hz.max()), 1e-9)).astype(np.float32)
        mod = np.cos(_wrap(parts.shaft_phase + phi))
        parts.mono["tone"] = parts.mono["tone"] * (1.0 + rng.uniform(0.2, 0.5) * mod * running)
        x = np.sin(_wrap(parts.shaft_phase + phi + rng.uniform(-0.5, 0.5))) * running
        x += 0.3 * np.sin(_wrap(2 * parts.shaft_phase + rng.uniform(0, TWO_PI))) * running
        parts.mono["anomaly"] = x * _anomaly_gain(rng, normal, x, sr, (8.0, 16.0), (-10.0, -3.0))
    # drift is in the speed profile already; render_clip checked the kind


def _check_names(names: Sequence[str], known: Sequence[str], what: str) -> None:
    """Raise InputError unless ``names`` is a non-empty list of ``known`` ones."""
    if not names:
        raise InputError(f"no {what}s given; choose from " + ", ".join(known))
    bad = [k for k in names if k not in known]
    if bad:
        raise InputError(f"unknown {what}(s) {', '.join(map(repr, bad))}; "
                         f"choose from {', '.join(known)}")


def check_anomaly_kinds(kinds: Sequence[str]) -> None:
    """Raise InputError unless ``kinds`` is a non-empty list of :data:`ANOMALY_KINDS`."""
    _check_names(kinds, ANOMALY_KINDS, "anomaly kind")


def render_clip(machine: Machine, duration: float, anomaly: str = "none",
                rng: np.random.Generator | None = None, speed: float = 1.0) -> np.ndarray:
    """One clip of ``machine``: float32 [frames, channels] in [-1, 1].

    ``anomaly`` is ``none`` or one of :data:`ANOMALY_KINDS`. ``rng`` defaults to a fixed
    generator; :func:`generate` passes the clip's own (:func:`clip_rng`). ``speed`` scales the
    machine's running speed (a target domain's operating point, :func:`target_speed`).
    """
    if not (isinstance(speed, (int, float, np.floating)) and 0.25 <= speed <= 4.0):
        raise InputError(f"speed must be between 0.25 and 4, got {speed!r}")
    if anomaly != "none":
        check_anomaly_kinds([anomaly])
    if rng is None:
        rng = np.random.default_rng(0)
    sr = machine.sample_rate
    n = max(int(math.floor(duration * sr + 0.5)), 1)
    p = machine.params
    s = _speed_profile(rng, p, n, sr, drift=(anomaly == "drift"))
    if speed != 1.0:
        s = s * speed
    gain_db = rng.uniform(-_CLIP_GAIN_DB, _CLIP_GAIN_DB)
    parts = _MODELS[machine.machine_type](p, n, sr, s, rng, machine.channels, machine.noise_corr)
    if anomaly != "none":
        _apply_anomaly(anomaly, rng, machine, parts, n)
    # Mix: every point source reaches each microphone with its own gain, channel 1 a little late.
    out = parts.noise * machine.mix["noise"][:, None]
    for name, x in parts.mono.items():
        for ch in range(machine.channels):
            g = machine.mix[name][ch]
            d = machine.delay if ch == 1 else 0
            if d:
                out[ch, d:] += g * x[:-d]
            else:
                out[ch] += g * x
    # Same loudness for normal and anomalous clips: the anomaly must not be a level change.
    out *= _db_to_gain(machine.level_db + gain_db) / max(_rms(out), 1e-12)
    peak = float(np.max(np.abs(out)))
    if peak > _PEAK:
        out *= _PEAK / peak
    return np.ascontiguousarray(out.T, dtype=np.float32)


# --------------------------------------------------------------------------- the data set

def _check(n_per_machine, machine_types, ids_per_type, anomaly_fraction, duration, sample_rates,
           seed, formats, anomaly_kinds) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(n_per_machine) or n_per_machine < 1:
        raise InputError(f"clips per machine must be a whole number >= 1, got {n_per_machine!r}")
    if not is_int(ids_per_type) or ids_per_type < 1:
        raise InputError(f"ids per type must be a whole number >= 1, got {ids_per_type!r}")
    _check_names(machine_types, MACHINE_TYPES, "machine type")
    if len(set(machine_types)) != len(machine_types):
        raise InputError("machine types repeated: " + ", ".join(machine_types))
    if not (isinstance(anomaly_fraction, (int, float, np.floating)) and 0.0 <= anomaly_fraction < 1.0):
        raise InputError(f"anomaly fraction must be in [0, 1), got {anomaly_fraction!r}")
    if not (isinstance(duration, (int, float, np.floating)) and 0.05 <= duration <= 600.0):
        raise InputError(f"duration must be between 0.05 and 600 seconds, got {duration!r}")
    if not sample_rates:
        raise InputError("no sample rates given")
    bad = [r for r in sample_rates if not is_int(r) or not 8000 <= r <= 192000]
    if bad:
        raise InputError(f"sample rates must be whole numbers of Hz from 8000 to 192000, "
                         f"got {', '.join(map(repr, bad))}")
    if not is_int(seed) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {seed!r}")
    if not formats or any(f not in FORMATS for f in formats):
        raise InputError(f"formats must be among {', '.join(FORMATS)}, got {', '.join(map(str, formats))}")
    if anomaly_fraction > 0:
        check_anomaly_kinds(anomaly_kinds)


#: The file ae-synth writes into every data set it makes: a non-empty directory without it is
#: not ours, and is written into only when asked (``force``).
MARKER_NAME = ".ae-synth"

#: Clips one run may make at most: labels are held in memory (a few hundred bytes a clip);
#: 2,000,000 is 40 times DCASE 2020's development set.
MAX_CLIPS = 2_000_000


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def estimated_bytes(n_per_machine: int, machine_types: Sequence[str], ids_per_type: int,
                    duration: float, sample_rates: Sequence[int], seed: int) -> int:
    """The bytes of 16-bit PCM audio a data set holds (its WAV files; FLAC ones are smaller),
    computed without listing its machines (rates and channel counts repeat with the id)."""
    period = 2 * len(sample_rates)
    total = 0
    for machine_type in machine_types:
        base = _TYPE_CODE[machine_type] + seed
        for r in range(min(period, ids_per_type)):
            machines = (ids_per_type - r + period - 1) // period  # ids r, r + period, ...
            k = base + r
            sr, channels = int(sample_rates[k % len(sample_rates)]), 1 + k % 2
            frames = max(int(math.floor(duration * sr + 0.5)), 1)
            total += machines * n_per_machine * (44 + 2 * channels * frames)
    return total


def check_size(out_dir: str | os.PathLike, n_per_machine: int, machine_types: Sequence[str],
               ids_per_type: int, duration: float, sample_rates: Sequence[int], seed: int) -> int:
    """Refuse (InputError), before anything is allocated or written, a data set of more than
    :data:`MAX_CLIPS` clips or with more audio than the free space where it goes. Returns the
    estimated bytes."""
    import shutil

    clips = n_per_machine * len(machine_types) * ids_per_type
    if clips > MAX_CLIPS:
        raise InputError(f"{clips:,} clips ({n_per_machine:,} per machine x {ids_per_type:,} ids "
                         f"x {len(machine_types)} types) is more than ae-synth makes "
                         f"({MAX_CLIPS:,} at most)")
    need = estimated_bytes(n_per_machine, machine_types, ids_per_type, duration, sample_rates,
                           seed)
    where = Path(os.path.abspath(out_dir))
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return need
    if need > free:
        raise InputError(f"{clips:,} clips of {duration:g} s need about {_human_bytes(need)} "
                         f"but {where} has {_human_bytes(free)} free; ask for fewer or shorter "
                         "clips")
    return need


def check_out_dir(out_dir: str | os.PathLike, force: bool = False) -> None:
    """Refuse (InputError) to write into an existing, non-empty directory that ae-synth did not
    make (it holds no :data:`MARKER_NAME`) unless ``force``: the files there are someone
    else's (a labels.csv of theirs would be replaced)."""
    root = Path(out_dir)
    if str(out_dir) == "":
        raise InputError("output directory: empty path")
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: exists and is not a directory")
    if force or not root.is_dir() or (root / MARKER_NAME).is_file():
        return
    try:
        empty = not any(os.scandir(root))
    except OSError:
        return  # unreadable: writing there fails later, with its own message
    if not empty:
        raise InputError(f"{root}: a non-empty directory that ae-synth did not make (no "
                         f"{MARKER_NAME} in it); give an empty or new directory, or --force "
                         "to write into it")


def write_clip(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> None:
    """Write float audio [frames, channels] as 16-bit PCM WAV or FLAC, atomically."""
    import soundfile as sf

    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    # Encoded in memory first: libsndfile fsyncs a real file on close, which costs more than
    # making the clip; the atomic rename still guarantees no half-written file.
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, subtype="PCM_16", format=_SUBTYPE_FORMAT[fmt])
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _clip_names(m: Machine, n_normal: int, n_anomalous: int, layout: str) -> Iterator[tuple[str, dict]]:
    """(id, extra label values) of a machine's normal clips 0..n_normal-1, then its anomalous
    clips 0..n_anomalous-1, in ``layout``; lazily (memory does not grow with the counts)."""
    if layout == "default":
        return itertools.chain(
            ((f"{m.machine_type}/{m.name}/normal_{k:04d}", {}) for k in range(n_normal)),
            ((f"{m.machine_type}/{m.name}/anomaly_{k:04d}", {}) for k in range(n_anomalous)))
    if layout == "dcase2023":
        return _dcase2023_names(m, n_normal, n_anomalous)
    # dcase2020: train holds normal clips only; test every anomalous clip and as many normal
    # ones, as DCASE 2020's development set does, but never the last normal clip.
    n_test_normal = min(n_anomalous, n_normal - 1)
    n_train = n_normal - n_test_normal
    number = f"{m.index:02d}"
    slots = itertools.chain((("train", "normal", k) for k in range(n_train)),
                            (("test", "normal", k) for k in range(n_test_normal)),
                            (("test", "anomaly", k) for k in range(n_anomalous)))
    return ((f"{m.machine_type}/{split}/{label}_id_{number}_{k:08d}",
             {"machine_id": number, "machine": m.key, "split": split, "label": label,
              "clip": f"{k:08d}"})
            for split, label, k in slots)


def _dcase2023_counts(n_normal: int, n_anomalous: int) -> dict:
    """Clips per (domain, split, label) of one section: test holds every anomalous clip and as
    many normal ones (never the last normal clip), each half (the odd one to the source) in
    each domain; train the other normal clips, TARGET_TRAIN_RATIO of them (at least one, while
    a source one is left) in the target domain."""
    n_test_normal = min(n_anomalous, n_normal - 1)
    n_train = n_normal - n_test_normal
    n_target_train = min(max(round(n_train * TARGET_TRAIN_RATIO), 1), n_train - 1)
    return {("source", "train", "normal"): n_train - n_target_train,
            ("target", "train", "normal"): n_target_train,
            ("source", "test", "normal"): n_test_normal - n_test_normal // 2,
            ("target", "test", "normal"): n_test_normal // 2,
            ("source", "test", "anomaly"): n_anomalous - n_anomalous // 2,
            ("target", "test", "anomaly"): n_anomalous // 2}


def _dcase2023_slots(n_normal: int, n_anomalous: int) -> Iterator[tuple[str, str, str, int]]:
    """(domain, split, label, number in its folder) of normal clips 0..n_normal-1, then of
    anomalous clips 0..n_anomalous-1, in that order; lazily."""
    counts = _dcase2023_counts(n_normal, n_anomalous)
    return itertools.chain.from_iterable(
        ((d, sp, lab, k) for k in range(c)) for (d, sp, lab), c in counts.items())


def _dcase2023_names(m: Machine, n_normal: int, n_anomalous: int) -> Iterator[tuple[str, dict]]:
    section = f"{m.index:02d}"
    speeds = {"source": 100,
              "target": round(100 * target_speed(m.seed, m.machine_type, m.index))}
    for domain, split, label, k in _dcase2023_slots(n_normal, n_anomalous):
        attributes = f"spd_{speeds[domain]}"
        yield (f"{m.machine_type}/{split}/section_{section}_{domain}_{split}_{label}_{k:04d}_"
               f"{attributes}",
               {"section": section, "machine": f"{m.machine_type}_section_{section}",
                "domain": domain, "split": split, "label": label, "clip": f"{k:04d}",
                "attributes": attributes, "spd": str(speeds[domain])})


def generate(out_dir: str | os.PathLike,
             n_per_machine: int = DEFAULT_CLIPS_PER_MACHINE,
             machine_types: Sequence[str] = MACHINE_TYPES,
             ids_per_type: int = DEFAULT_IDS_PER_TYPE,
             anomaly_fraction: float = DEFAULT_ANOMALY_FRACTION,
             duration: float = DEFAULT_DURATION,
             sample_rates: Sequence[int] = DEFAULT_SAMPLE_RATES,
             seed: int = DEFAULT_SEED,
             formats: Sequence[str] = ("wav",),
             progress: Callable[[int], None] | None = None,
             anomaly_kinds: Sequence[str] = ANOMALY_KINDS,
             layout: str = "default", force: bool = False):
    """Write the demo data set under ``out_dir`` and return its labels (also in ``labels.csv``).

    Per machine, ``round(n_per_machine * anomaly_fraction)`` clips are anomalous (when the
    fraction is above 0: at least one, and at least one normal clip is kept), their kinds
    cycling through ``anomaly_kinds``. Each machine's clips cycle through ``formats``.
    ``progress(1)`` is called after each clip. Files from an earlier run that this run does
    not rewrite are left alone (and logged as a warning); labels.csv lists this run's only.
    ``layout``: ``default``, ``dcase2020`` or ``dcase2023`` (see the module docstring).
    A non-empty ``out_dir`` that ae-synth did not make (no :data:`MARKER_NAME` file) is
    refused unless ``force``; so is a data set larger than :func:`check_size` allows.
    Raises :class:`aekit.errors.InputError` for bad values.
    """
    import pandas as pd

    machine_types = tuple(machine_types)
    sample_rates = tuple(sample_rates)
    formats = tuple(formats)
    anomaly_kinds = tuple(anomaly_kinds)
    _check(n_per_machine, machine_types, ids_per_type, anomaly_fraction, duration, sample_rates,
           seed, formats, anomaly_kinds)
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    check_out_dir(out_dir, force)
    check_size(out_dir, n_per_machine, machine_types, ids_per_type, duration, sample_rates, seed)
    root = Path(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {root}: {exc.strerror}") from None
    with atomic_path(root / MARKER_NAME) as tmp:
        tmp.write_text("A data set written by ae-synth (aekit): it may write here again.\n",
                       encoding="utf-8")

    n_anomalous = round(n_per_machine * anomaly_fraction)
    if anomaly_fraction > 0:
        n_anomalous = min(max(n_anomalous, 1), n_per_machine - 1) if n_per_machine > 1 else 0
    rows, written = [], set()
    for machine_type in machine_types:
        for index in range(ids_per_type):
            m = make_machine(seed, machine_type, index, sample_rates)
            plan = itertools.chain(((False, k) for k in range(n_per_machine - n_anomalous)),
                                   ((True, k) for k in range(n_anomalous)))  # lazily
            names = _clip_names(m, n_per_machine - n_anomalous, n_anomalous, layout)
            for ordinal, ((is_anomaly, k), (clip_id, extra)) in enumerate(zip(plan, names)):
                kind = (anomaly_kinds[(k + _TYPE_CODE[machine_type] + index) % len(anomaly_kinds)]
                        if is_anomaly else "none")
                fmt = formats[ordinal % len(formats)]
                if extra.get("domain") == "target":  # dcase2023: another operating point
                    audio = render_clip(m, duration, kind,
                                        target_clip_rng(seed, machine_type, index, is_anomaly, k),
                                        speed=target_speed(seed, machine_type, index))
                else:
                    audio = render_clip(m, duration, kind,
                                        clip_rng(seed, machine_type, index, is_anomaly, k))
                path = root / f"{clip_id}.{fmt}"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_clip(path, audio, m.sample_rate, fmt)
                written.add(path.resolve())
                for other in FORMATS:   # the same clip left in another format would duplicate its id
                    if other != fmt and path.with_suffix(f".{other}").exists():
                        path.with_suffix(f".{other}").unlink()
                rows.append({"id": clip_id, "machine_type": machine_type,
                             "machine_id": m.key, "anomaly": int(is_anomaly), "anomaly_kind": kind,
                             "sample_rate": m.sample_rate, "channels": m.channels, **extra})
                if progress is not None:
                    progress(1)

    columns = {"default": LABEL_COLUMNS, "dcase2020": DCASE2020_LABEL_COLUMNS,
               "dcase2023": DCASE2023_LABEL_COLUMNS}[layout]
    labels = pd.DataFrame(rows, columns=list(columns))
    with atomic_path(root / LABELS_NAME) as tmp:
        labels.to_csv(tmp, index=False, lineterminator="\n")
    stale = sorted(p for ext in FORMATS for p in root.rglob(f"*.{ext}") if p.resolve() not in written)
    if stale:
        LOG.warning("%d audio file(s) under %s are not from this run and not in %s (e.g. %s); "
                    "remove them or use a fresh directory", len(stale), root, LABELS_NAME,
                    stale[0].relative_to(root))
    return labels
