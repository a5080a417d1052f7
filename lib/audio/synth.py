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
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from aekit.errors import InputError
from aekit.system.fileio import atomic_path
from aekit.audio.synth_machines import (  # noqa: F401 - the machines, importable from here too
    _TYPE_CODE, ANOMALY_KINDS, DEFAULT_SAMPLE_RATES, MACHINE_TYPES, Machine, clip_rng,
    make_machine, target_clip_rng, target_speed)
from aekit.audio.synth_sound import _check_names, check_anomaly_kinds, render_clip  # noqa: F401

LOG = logging.getLogger(__name__)

FORMATS = ("wav", "flac")
_SUBTYPE_FORMAT = {"wav": "WAV", "flac": "FLAC"}

# Defaults, in one place (the command reuses them).
DEFAULT_CLIPS_PER_MACHINE = 25        # 4 types x 3 ids x 25 = 300 clips: a few seconds to make
DEFAULT_IDS_PER_TYPE = 3              # enough machines for per-machine and cross-machine splits
DEFAULT_ANOMALY_FRACTION = 0.2        # 5 of 25 clips per machine: every kind shows up
DEFAULT_DURATION = 6.25               # seconds: 100,000 samples at 16 kHz, the tutorial's length
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
        raise InputError(f"needed to write into {root}, a non-empty directory that ae-synth "
                         f"did not make (no {MARKER_NAME} in it); or give an empty or new "
                         "directory", param="force")


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
