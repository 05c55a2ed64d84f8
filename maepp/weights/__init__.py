"""Model weights outside training checkpoints: maepp weight directories (store), the official
PyTorch release's layout (release) and the converter between them (`python -m maepp.weights.convert`)."""
