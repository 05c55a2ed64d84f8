"""Audio front end: waveform -> standardised log-mel spectrogram (PAPER.md, "Input")."""
