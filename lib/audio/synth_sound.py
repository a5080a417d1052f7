"""The demo data set's sound: one physically motivated model per machine type, the four
anomalies, and ``render_clip`` (``aekit.audio.synth`` describes them)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from aekit.errors import InputError

from aekit.audio.synth_machines import (
    _CLIP_GAIN_DB, _PEAK, ANOMALY_KINDS, TWO_PI, Machine, _band_shape, _below_nyquist, _convolve,
    _crossings, _damped_modes, _db_to_gain, _harmonics, _noise, _Parts, _phase, _phasor, _place,
    _rms, _speed_profile, _unit_rms, _wrap)

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
