"""aekit: audio -> log-Mel features -> autoencoder -> verdict, as a library.

Every ``ae-*`` command is a thin wrapper over functions in this package, so
everything the commands do can also be done from Python or a notebook. The names in
``__all__`` are the public API (documented in the README, "Python API"); they are
imported on first use, so ``import aekit`` itself does not import torch.

    import aekit
    model = aekit.load_model("model.safetensors")
    for rec in aekit.score_files(model, ["a.wav", "b.wav"]):
        print(rec.id, rec.score)            # None (and rec.error) if undecodable
    aekit.resolve_score(model)              # which score: 'mse' (dB^2) or 'mahalanobis'
"""

__version__ = "0.1.0"

#: Public name -> the module that defines it (imported lazily by ``__getattr__``).
_API = {
    "load_model": "models.modelfile",  # model file -> LoadedModel (weights, normalizer, metadata)
    "LoadedModel": "models.modelfile",
    "model_params": "evaluate.scoring",  # the feature parameters stored in a model
    "featurize_files": "evaluate.scoring",  # audio files -> Featurized(index, path, features, meta, error)
    "score_files": "evaluate.scoring",  # audio files -> ScoreRecord(index, id, path, score, error)
    "score_features": "evaluate.scoring",  # clips [N, C, M, T] dB -> scores [N]
    "score_array": "evaluate.scoring",  # waveforms [N, channels, samples] -> scores [N]
    "ScoreRecord": "evaluate.scoring",
    "stored_threshold": "evaluate.thresholds",  # the threshold ae-train stored in a model
    "resolve_score": "evaluate.scoring",  # 'auto' -> the score a model uses ('mse' or 'mahalanobis')
    "model_threshold": "evaluate.autoscore",  # a model's decision threshold of a score (auto: its own)
    "fit_threshold": "evaluate.thresholds",  # scores -> a threshold (gamma fit, DCASE style)
    "open_features": "data.store",  # a features file (HDF5) for reading
    "MelParams": "audio.features",
}
_ALIASES = {"open_features": "FeatureFile"}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(f"aekit.{_API[name]}"), _ALIASES.get(name, name))
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'aekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
