"""Issue 18, item 3: integrity covers everything that changes a number.

Real bit flips in the places HDF5's Fletcher-32 does not cover (the chunk index, the ids'
string heap, a parameter attribute), edits of a model file's JSON header kept to the same
length, malformed model metadata refused before any allocation, ae-merge's shard attributes,
and --resume refusing a features file with the same ids but other values (tiny inputs only).
"""

import json
import logging

import h5py
import numpy as np
import pytest
import torch
from conftest import invoke, one_error_line, write_features
from safetensors.torch import load_file, save_file

from aekit.models import modelfile
from aekit.data import integrity, latents, merge, store
from aekit.cmds.merge import cli as merge_cli
from aekit.cmds.train import SIGTERM_AT_STEP_ENV
from aekit.cmds.train import cli as train_cli
from aekit.errors import InputError
from aekit.models.modelfile import Normalizer, load_model, metadata_sha256, read_info, save_model
from aekit.models.mlp import AEConfig
from aekit.models.registry import build_model

SHAPE = (2, 4, 10)




def flip(path, offset, mask):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ mask]))


def find_once(path, needle: bytes, exclude_before: bytes = b"") -> int:
    data = open(path, "rb").read()
    hits = [i for i in range(len(data)) if data.startswith(needle, i)
            and not (exclude_before and data[max(0, i - len(exclude_before)):i] == exclude_before)]
    assert len(hits) == 1, hits
    return hits[0]


# --------------------------------------------------------------------------- features files

def _flip_chunk_row(p, name, i, rank):
    """Flip bit 0 of the row coordinate in the chunk index (a v1 B-tree) of chunk ``i`` of
    /name: key (size u32, filter mask u32, offsets u64 x (rank + 1)), then the chunk's
    address; the key of the chunk ends right before its address."""
    with h5py.File(p) as f:
        addr = f[name].id.get_chunk_info(i).byte_offset
        row = f[name].id.get_chunk_info(i).chunk_offset[0]
    key = find_once(p, addr.to_bytes(8, "little")) - (8 + 8 * (rank + 1))
    assert int.from_bytes(open(p, "rb").read()[key + 8:key + 16], "little") == row
    flip(p, key + 8, 0x01)


def test_chunk_index_bit_flip_is_refused_not_read_as_zeros(tmp_path):
    p = tmp_path / "f.h5"
    _, x = write_features(p, n=24)
    _flip_chunk_row(p, "features", 5, 4)  # clip 5's chunk now claims row 4: row 5 has none
    with store.FeatureFile(p) as ff:
        np.testing.assert_array_equal(ff.read([6, 7]), x[[6, 7]])
        with pytest.raises(InputError, match=r"data of 1 clip\(s\) is missing from the HDF5 "
                                             r"chunk index: clip005; the file is corrupt"):
            ff.read([5])  # the fill value is NaN, never a clip of zeros
    line = one_error_line(invoke(merge_cli, [p, "-o", tmp_path / "m.h5"]))
    assert "missing from the HDF5 chunk index: clip005" in line and not (tmp_path / "m.h5").exists()


def test_per_clip_chunk_index_bit_flip_is_refused_on_open(tmp_path):
    p = tmp_path / "f.h5"
    write_features(p, n=24)
    _flip_chunk_row(p, "valid_samples", 0, 1)  # its one chunk moves off the grid: all zeros
    with pytest.raises(InputError, match=r"chunk index of /valid_samples does not match its shape"):
        store.FeatureFile(p)


def test_chunk_address_bit_flip_into_zeros_is_refused(tmp_path):
    """HDF5's Fletcher-32 of all-zero bytes is 0: a chunk address flipped to point into zeroed
    space reads a clip of zeros without any HDF5 error."""
    p = tmp_path / "f.h5"
    _, x = write_features(p, n=24)
    with h5py.File(p) as f:
        info = f["features"].id.get_chunk_info(5)
        assert f.attrs["zero_clips"] == 0
    data = open(p, "rb").read()
    at = find_once(p, info.byte_offset.to_bytes(8, "little"))
    bit = next(b for b in range(4, 24) if (t := info.byte_offset ^ (1 << b)) + info.size
               <= len(data) and not any(data[t:t + info.size]))
    flip(p, at + bit // 8, 1 << (bit % 8))
    with h5py.File(p) as f:
        assert not f["features"][5].any()  # HDF5 reads zeros, no checksum error
    with store.FeatureFile(p) as ff:
        np.testing.assert_array_equal(ff.read([4, 6]), x[[4, 6]])
        with pytest.raises(InputError, match=r"1 clip\(s\) read as all zeros although none was "
                                             r"written so .*: clip005; the file is corrupt"):
            ff.read([5])


def test_datatype_bit_flip_is_refused(tmp_path):
    p = tmp_path / "f.h5"
    write_features(p, n=24)
    # /features' float datatype (the only float here): exponent at bit 23, 8 bits, mantissa
    # at bit 0, 23 bits, exponent bias 127
    at = find_once(p, bytes([0x17, 0x08, 0x00, 0x17, 0x7F, 0, 0, 0]))
    flip(p, at + 4, 0x10)  # bias 127 -> 111: HDF5 converts every value, silently
    with pytest.raises(InputError, match=r"/features is not stored as float32 .*the file is corrupt"):
        store.FeatureFile(p)


def test_id_heap_bit_flip_is_refused(tmp_path):
    p = tmp_path / "f.h5"
    write_features(p, n=24)
    at = find_once(p, b"clip007\x00", exclude_before=b"/data/")  # the id, not the path
    flip(p, at + 6, 0x40)  # 'clip007' -> 'clip00w': a renamed id, still unique
    with pytest.raises(InputError, match=r"metadata checksum mismatch .*the file is corrupt"):
        store.FeatureFile(p)


def test_parameter_attribute_bit_flip_is_refused(tmp_path):
    p = tmp_path / "f.h5"
    write_features(p, n=24)
    data = open(p, "rb").read()
    name = find_once(p, b"n_fft\x00")
    at = data.index((1024).to_bytes(8, "little"), name)
    assert at - name < 64
    flip(p, at + 1, 0x08)  # n_fft 1024 -> 3072
    with h5py.File(p) as f:
        assert f.attrs["n_fft"] == 3072  # HDF5 itself sees nothing wrong
    r = invoke(train_cli, [p, "-o", tmp_path / "m.safetensors", "--hidden", "8", "--latent", "4",
                           "--epochs", "1"])
    assert "metadata checksum mismatch" in one_error_line(r)
    assert not (tmp_path / "m.safetensors").exists()


def test_damaged_hdf5_metadata_is_one_line(tmp_path):
    p = tmp_path / "f.h5"
    write_features(p, n=4)
    dims = b"".join(v.to_bytes(8, "little") for v in (4, *SHAPE))  # /features' dataspace
    flip(p, find_once(p, dims) - 8, 0x01)  # the dataspace message's version byte
    with pytest.raises(InputError, match=r"f.h5: corrupt or not an aekit features file "
                                         r"\('Unable to synchronously open object"):
        store.FeatureFile(p)
    line = one_error_line(invoke(merge_cli, [p, "-o", tmp_path / "m.h5"]))
    assert "corrupt or not an aekit features file" in line


def _as_format_1(p):
    with h5py.File(p, "a") as f:
        f.attrs["format_version"] = 1
        del f.attrs["meta_sha256"], f.attrs["features_sha256"]


def test_format_1_files_still_read_with_a_note(tmp_path, caplog):
    p = tmp_path / "f.h5"
    _, x = write_features(p, n=6)
    with h5py.File(p) as f:
        assert f.attrs["format_version"] == 2
        assert np.isnan(f["features"].fillvalue)
    _as_format_1(p)
    with caplog.at_level(logging.WARNING, logger="aekit"):
        with store.FeatureFile(p) as ff:
            np.testing.assert_array_equal(ff.read(), x)
            assert ff.content_sha256 is None
    assert "features format 1" in caplog.text and "no checksum" in caplog.text


@pytest.mark.parametrize("value,msg", [
    ("2", "shard_count='2' is not an integer"),
    (1.5, "shard_count=1.5 is not an integer"),
    (0, "shard_count 0 is not positive"),
    (10_000_000, "incomplete set of shards: missing 1/10000000, 2/10000000, 3/10000000, "
                 "4/10000000, 5/10000000 (and 9999994 more)"),
])
def test_merge_bad_shard_count_is_one_line(tmp_path, value, msg):
    p = tmp_path / "f.h5"
    write_features(p, n=4)
    with h5py.File(p, "a") as f:
        f.attrs["shard_count"] = value
    line = one_error_line(invoke(merge_cli, [p, "-o", tmp_path / "m.h5"]))
    assert "metadata checksum mismatch" in line
    _as_format_1(p)  # no hash to catch it: the value itself is checked
    assert msg in one_error_line(invoke(merge_cli, [p, "-o", tmp_path / "m.h5"]))
    assert not (tmp_path / "m.h5").exists()


def test_merge_without_paths_is_one_line(tmp_path):
    p = tmp_path / "f.h5"
    write_features(p, n=4)
    with h5py.File(p, "a") as f:
        del f["paths"]
    assert "/paths is missing" in one_error_line(invoke(merge_cli, [p, "-o", tmp_path / "m.h5"]))
    _as_format_1(p)
    assert "/paths is missing" in one_error_line(invoke(merge_cli, [p, "-o", tmp_path / "m.h5"]))


def test_merge_verifies_the_values_and_writes_their_hash(tmp_path):
    p = tmp_path / "f.h5"
    _, x = write_features(p, n=6)
    assert merge.merge_shards([p], tmp_path / "m.h5") == 6
    with store.FeatureFile(p) as a, store.FeatureFile(tmp_path / "m.h5") as b:
        assert a.content_sha256 == b.content_sha256 == integrity.content_sha256(b)
    with h5py.File(p, "r+") as f:  # rows rewritten in place: Fletcher-32 is recomputed
        f["features"][:] = x[::-1]
    with store.FeatureFile(p) as ff:  # opening stays cheap: the values are not read
        with pytest.raises(InputError, match="data checksum mismatch"):
            integrity.content_sha256(ff)
    line = one_error_line(invoke(merge_cli, [p, "-o", tmp_path / "n.h5"]))
    assert "data checksum mismatch" in line
    assert not (tmp_path / "n.h5").exists()


def test_latents_ids_and_attributes_are_hashed(tmp_path):
    p = tmp_path / "z.h5"
    z = np.arange(12, dtype=np.float32).reshape(6, 2)
    with latents.LatentsWriter(p, 2, {"model": "m.safetensors", "latent": 2}, chunk=2) as w:
        w.append(z, [f"clip{i:03d}" for i in range(6)])
    lf = latents.LatentsFile(p)
    np.testing.assert_array_equal(lf.latents, z)
    assert lf.attrs["format_version"] == 2 and len(lf.attrs["meta_sha256"]) == 64
    flip(p, find_once(p, b"clip004\x00") + 6, 0x40)  # an id renamed in the string heap
    with pytest.raises(InputError, match="metadata checksum mismatch"):
        latents.LatentsFile(p)


# --------------------------------------------------------------------------- model files

def _model(path, **meta):
    x = np.random.default_rng(0).normal(-40, 6, (8, *SHAPE)).astype(np.float32)
    torch.manual_seed(0)
    model = build_model(AEConfig(input_shape=SHAPE, hidden=(16, 8), latent=4)).eval()
    feature_params = {"n_fft": 1024, "top_db": 80.0}
    save_model(path, model, Normalizer("global", dim=x[0].size).fit([x]), feature_params, **meta)
    return path


def _edit_header(path, old: str, new: str):
    """Replace text inside the JSON header in place, keeping the file's length."""
    assert len(old) == len(new)
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].decode()
    assert header.count(old) == 1, header
    out = data[:8] + header.replace(old, new).encode() + data[8 + n:]
    assert len(out) == len(data)
    open(path, "wb").write(out)


THRESHOLD = {"method": "empirical", "value": 1.5, "quantile": 0.9, "n": 8}


@pytest.mark.parametrize("old,new,msg", [
    ('\\"top_db\\": 80.0', '\\"top_db\\": 90.0', "metadata checksum mismatch"),
    ('\\"normalize\\": \\"global\\"', '\\"normalize\\": \\"none\\"  ',
     "metadata checksum mismatch"),
    ('\\"value\\": 1.5', '\\"value\\": 9.5', "metadata checksum mismatch"),
    ('\\"format_version\\": 2,', '\\"format_version\\":99,', "unknown model format_version 99"),
])
def test_model_metadata_edits_are_refused(tmp_path, old, new, msg):
    p = _model(tmp_path / "m.safetensors", threshold=THRESHOLD)
    load_model(p)
    _edit_header(p, old, new)
    with pytest.raises(InputError, match=msg):
        load_model(p)
    with pytest.raises(InputError, match=msg):
        read_info(p)


def _rewrite(path, change, rehash=True):
    """The model with its metadata changed by ``change(info)`` and, as a careless tool
    would, a fresh metadata hash: the values themselves must then be checked."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["aekit"])
    tensors = load_file(str(path))
    info = change(info) or info
    if rehash and isinstance(info, dict):
        info["sha256"] = metadata_sha256(info)
    save_file(tensors, str(path), metadata={"aekit": json.dumps(info)})
    return path


def _set(key, value, inner=None):
    def change(info):
        (info[inner] if inner else info)[key] = value
    return change


@pytest.mark.parametrize("change,msg", [
    (lambda i: i.pop("config") and None, "bad model metadata: no config"),
    (_set("hidden", ["16", 8], "config"), r"config: hidden=\['16', 8\] is not valid \(expected a "
                                          r"list of positive integers\)"),
    (_set("latent", 4.0, "config"), "config: latent=4.0 is not valid"),
    (_set("input_shape", [2, 4], "config"), r"config: input_shape=\[2, 4\] is not valid"),
    (_set("normalize", "bogus"), "normalize 'bogus' is not one of"),
    (_set("format_version", "2"), "unknown model format_version '2'"),
    (_set("history", {}), "history is a dict, expected a list"),
    (lambda i: [i], "model metadata is not a JSON object"),
])
def test_malformed_metadata_is_one_line(tmp_path, change, msg):
    p = _rewrite(_model(tmp_path / "m.safetensors"), change)
    with pytest.raises(InputError, match=msg):
        load_model(p)


def test_deeply_nested_metadata_is_one_line(tmp_path):
    p = _model(tmp_path / "m.safetensors")
    tensors = load_file(str(p))
    save_file(tensors, str(p), metadata={"aekit": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(InputError, match="nested too deeply"):
        read_info(p)


def test_huge_claimed_layers_are_refused_before_allocation(tmp_path, monkeypatch):
    """A 10 KB model whose header claims hidden=[1000000]: refused from the header's shapes,
    the model only ever built on the meta device."""
    p = _rewrite(_model(tmp_path / "m.safetensors"), _set("hidden", [1_000_000, 8], "config"))
    built = []
    real = modelfile.build_model
    monkeypatch.setattr(modelfile, "build_model", lambda config, device=None:
                        built.append(str(device)) or real(config, device))
    with pytest.raises(InputError, match=r"tensor 'model.encoder.0.weight' is F32 \[16, 80\], the "
                                         r"config implies F32 \[1000000, 80\]"):
        load_model(p)
    assert built == ["meta"]


def test_saved_model_carries_both_hashes(tmp_path):
    p = _model(tmp_path / "m.safetensors", threshold=THRESHOLD)
    info = read_info(p)
    assert info["format_version"] == 2 and info["sha256"] == metadata_sha256(info)
    assert len(info["tensors_sha256"]) == 64
    # save_model computes both itself: stale hashes passed in (a re-save) are not kept
    m = load_model(p)
    q = tmp_path / "q.safetensors"
    save_model(q, m.model, m.normalizer, m.feature_params, sha256="0" * 64, tensors_sha256="1" * 64)
    assert load_model(q).info["sha256"] == metadata_sha256(read_info(q))


# --------------------------------------------------------------------------- --resume

def test_resume_refuses_other_values_under_the_same_ids(tmp_path, monkeypatch):
    p = tmp_path / "f.h5"
    ids, x = write_features(p, n=24)
    out = tmp_path / "m.safetensors"
    args = [p, "-o", out, "--hidden", "16", "--latent", "4", "--epochs", "2", "--batch-size", "8"]

    def no_hashing(ff, block=256):
        raise AssertionError("a fresh run read the values to hash them")

    monkeypatch.setattr("aekit.data.integrity.content_sha256", no_hashing)  # the stored hash is used
    monkeypatch.setenv(SIGTERM_AT_STEP_ENV, "1")
    assert invoke(train_cli, args).exit_code == 3
    monkeypatch.undo()
    ck = torch.load(tmp_path / "m.safetensors.ckpt" / "last.pt", weights_only=True)
    with store.FeatureFile(p) as ff:
        assert ck["data"]["features_sha256"] == ff.content_sha256

    perm = np.random.default_rng(1).permutation(24)
    # 1. written anew with the rows permuted: same ids, shape and parameters
    with store.FeatureFile(p) as ff:
        params = ff.params
    w = store.FeatureWriter(p, params, SHAPE)
    w.append(x[perm], ids, [f"/data/{i}.wav" for i in ids],
             {k: np.zeros(24) for k in store.PER_CLIP})
    w.close()
    line = one_error_line(invoke(train_cli, [*args, "--resume"]))
    assert "the features' values differ" in line and "same ids, other data" in line
    # 2. rewritten in place (its stored hash unchanged): the resume hashes the values
    write_features(p, n=24, ids=ids)
    with h5py.File(p, "r+") as f:
        f["features"][:] = x[perm]
    assert "data checksum mismatch" in one_error_line(invoke(train_cli, [*args, "--resume"]))
    # the same values resume
    write_features(p, n=24, ids=ids)
    assert invoke(train_cli, [*args, "--resume"]).exit_code == 0
