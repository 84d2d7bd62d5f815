"""The speech side of speech-to-video: audio files in, per-frame wav2vec2 feature buckets out.

``decode`` and ``probe`` read a file with the ffmpeg binary that imageio-ffmpeg ships (no torch);
``clips`` holds the pure arithmetic of how many clips and frames a recording needs (no torch);
``wav2vec`` runs the speech encoder through transformers and ``buckets`` turns its features into
one window per video frame, as the official Wan2.2 speech-to-video code does. Importing this
package imports nothing heavy: each module pulls in only what it uses.
"""
