"""Decoding, resampling, channel fixing, discovery and ids."""

import numpy as np
import pytest
import soundfile as sf

from aekit.audio.decode import AudioError, common_root, discover, fix_channels, load_clip, make_ids
from aekit.errors import InputError


def test_mono_is_repeated_to_two_channels(tmp_path, tone):
    f = tone(tmp_path / "a.wav", sr=16000, seconds=0.5, channels=1)
    clip = load_clip(f, 16000, 10000, 2)
    assert clip.samples.shape == (2, 10000)
    np.testing.assert_array_equal(clip.samples[0], clip.samples[1])
    assert (clip.source_sample_rate, clip.source_channels, clip.source_frames) == (16000, 1, 8000)
    assert clip.valid_samples == 8000
    assert not clip.samples[:, 8000:].any()  # zero padding on the right


def test_same_rate_decodes_like_soundfile(tmp_path, tone):
    f = tone(tmp_path / "a.wav", sr=16000, seconds=1.0, channels=2, subtype="PCM_16")
    ref, _ = sf.read(str(f), dtype="float32", always_2d=True)
    clip = load_clip(f, 16000, 12000, 2)
    np.testing.assert_array_equal(clip.samples, ref[:12000].T)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resampled_length_and_content(tmp_path, sr):
    t = np.arange(sr) / sr  # 1 s of 1 kHz
    f = tmp_path / "x.wav"
    sf.write(str(f), (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), sr, subtype="FLOAT")
    clip = load_clip(f, 16000, 20000, 1)
    assert clip.valid_samples == 16000
    y = clip.samples[0, 1000:15000]
    expect = 0.5 * np.sin(2 * np.pi * 1000 * (np.arange(1000, 15000) / 16000))
    assert np.abs(y - expect).max() < 0.01


def test_truncation_reads_only_what_is_kept(tmp_path, monkeypatch):
    f = tmp_path / "long.wav"
    sf.write(str(f), np.zeros(16000 * 60, dtype=np.float32), 16000)
    reads = []
    orig = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        reads.append(frames)
        return orig(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    clip = load_clip(f, 16000, 5000, 1)
    assert reads == [5000]
    assert clip.source_frames == 16000 * 60 and clip.valid_samples == 5000
    reads.clear()
    load_clip(f, 8000, 5000, 1)  # resampling: a margin more, still far from the whole file
    assert reads[0] < 16000 * 2


def test_more_channels_first_or_mix():
    x = np.stack([np.full(4, v, dtype=np.float32) for v in (1.0, 2.0, 3.0)])
    y, cut = fix_channels(x, 2, "first")
    assert cut and y.tolist() == [[1.0] * 4, [2.0] * 4]
    y, cut = fix_channels(x, 2, "mix")
    assert not cut and y.tolist() == [[2.0] * 4, [2.0] * 4]
    y, _ = fix_channels(x[:2], 3, "first")
    assert y[:, 0].tolist() == [1.0, 2.0, 1.0]


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, this is not audio at all" * 10, "cannot decode"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot decode"),
])
def test_bad_files_raise_audio_error(tmp_path, content, reason):
    f = tmp_path / "bad.wav"
    f.write_bytes(content)
    with pytest.raises(AudioError, match=reason):
        load_clip(f, 16000, 1000, 1)


def test_zero_sample_file(tmp_path):
    f = tmp_path / "z.wav"
    sf.write(str(f), np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_clip(f, 16000, 1000, 1)


def test_discover_and_ids(tmp_path, tone):
    tone(tmp_path / "d" / "b.wav")
    tone(tmp_path / "d" / "sub" / "a.flac")
    (tmp_path / "d" / "notes.txt").write_text("x")
    paths = discover([str(tmp_path / "d")])
    assert [p.name for p in paths] == ["b.wav", "a.flac"]
    assert make_ids(paths) == ["b", "sub/a"]
    only_sub = discover([str(tmp_path / "d")])[1:]
    assert make_ids(only_sub) == ["a"]
    assert make_ids(only_sub, common_root([str(tmp_path / "d")], only_sub)) == ["sub/a"]
    assert discover(["-"], iter([str(paths[1]) + "\n", "\n"])) == [paths[1]]
    with pytest.raises(InputError, match="no such file"):
        discover([str(tmp_path / "nope")])
    with pytest.raises(InputError, match="only input"):
        discover(["-", str(tmp_path)])


def test_ids_keep_extension_when_stems_collide(tmp_path, tone):
    a = tone(tmp_path / "x.wav")
    b = tone(tmp_path / "x.flac")
    assert make_ids([a, b]) == ["x.wav", "x.flac"]


def _mixed_files(d):
    """Rates, channel counts, lengths, containers, a cut-off body and bad files, in a row."""
    from conftest import write_tone

    files = [
        write_tone(d / "mono16.wav", sr=16000, seconds=0.3, channels=1, subtype="PCM_16"),
        write_tone(d / "st44.wav", sr=44100, seconds=0.5, channels=2, subtype="PCM_24"),
        write_tone(d / "three8k.wav", sr=8000, seconds=0.2, channels=3, subtype="PCM_U8"),
        write_tone(d / "long.flac", sr=16000, seconds=1.5, channels=2, seed=3),
        write_tone(d / "four.wav", sr=22050, seconds=0.4, channels=4, subtype="FLOAT"),
        write_tone(d / "st.ogg", sr=16000, seconds=0.5, channels=2),
    ]
    cut = d / "cut.wav"
    whole = write_tone(d / "whole.wav", sr=16000, seconds=0.8, channels=2).read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    bad = d / "bad.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    nan = d / "nan.wav"
    x = np.zeros((800, 2), dtype=np.float32)
    x[10, 1] = np.inf
    sf.write(str(nan), x, 16000, subtype="FLOAT")
    return [files[0], bad, files[1], cut, files[2], nan, files[3], files[4], files[5], files[0]]


@pytest.mark.parametrize("channels,policy", [(2, "first"), (1, "first"), (2, "mix"), (3, "first")])
def test_clip_reader_equals_load_clip(tmp_path, channels, policy):
    from aekit.audio.decode import ClipReader

    reader = ClipReader(16000, 12000, channels, policy)
    previous = None
    for f in _mixed_files(tmp_path):
        try:
            want = load_clip(f, 16000, 12000, channels, policy)
        except AudioError as exc:
            with pytest.raises(AudioError) as got:
                reader.read(f)
            assert str(got.value) == str(exc)
            continue
        got = reader.read(f)
        assert got.samples.dtype == np.float32 and got.samples.shape == want.samples.shape
        assert got.samples.tobytes() == want.samples.tobytes(), f  # the same bits
        assert (got.source_sample_rate, got.source_channels, got.source_frames, got.valid_samples,
                got.channels_cut, got.truncated) == (
                want.source_sample_rate, want.source_channels, want.source_frames,
                want.valid_samples, want.channels_cut, want.truncated)
        if previous is not None:  # one buffer, reused: nothing allocated per file
            assert np.shares_memory(previous, got.samples)
        previous = got.samples


def test_large_finite_samples_are_not_taken_for_inf(tmp_path):
    f = tmp_path / "loud.wav"
    sf.write(str(f), np.full((4000, 2), 3e38, dtype=np.float32), 16000, subtype="FLOAT")
    clip = load_clip(f, 16000, 4000, 2)  # their float32 sum overflows; they are finite
    assert np.isfinite(clip.samples).all() and clip.samples.max() == np.float32(3e38)
