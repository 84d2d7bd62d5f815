"""Procedural shape clips: the quickstart model's training data and the classifier that grades its videos.

``vocabulary`` names what the clips can show, ``render`` draws one clip from a seeded spec,
``captions`` words (and reads back) its prompt, ``classify`` recovers colour, shape and motion
from frames alone, and ``dataset`` writes a DiffSynth-style folder of clips. Plain numpy, no
torch: the data and its judge must not depend on the model they train and grade.
"""
