"""Audio in: finding and decoding files, front ends (feature kinds), featurizing to a store, the demo synthesizer."""
