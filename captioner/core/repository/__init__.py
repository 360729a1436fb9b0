"""Model repositories: the files of a model on disk and on the Hugging Face Hub, the model card,
publishing, and the safe import of the classic tutorial's checkpoints."""
