"""Audio front end: waveform -> standardised log-mel spectrogram (docs/reference.md#input)."""
