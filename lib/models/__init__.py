"""The autoencoders: the registry of model kinds, the model contract (base), each kind, the model file."""
