//! The ML core shared by rmdistill's stages (models, checkpoints, tokenizers, log-probs, sampling, training).
