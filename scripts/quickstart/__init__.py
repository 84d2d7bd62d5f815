"""Train the quickstart family's text encoder and VAE, and write its DiT's starting point.

Each component learns what the tiny model must carry with a loss of its own, on the procedural
shape clips and captions of ``scripts/shapes``: the VAE reconstructs clips while keeping its
normalised latents at unit scale (``train_vae``), the umT5 encoder makes its token features name
colour, shape and motion whatever the wording (``train_text_encoder``), and ``init_dit`` writes a
DiT whose blocks start as the identity, for wanflow's own training stage to take over.
``build_family`` runs the three and lays out a family folder. Every file is written under the
official key layout, so wanflow's loaders read them unchanged; the same seed gives the same bytes.
"""
