"""The command-line application above both frameworks: `see3d demo|generate|released|reconstruct|world|dataset`.

It parses flags, picks the framework a command needs (imported only then) and prints where its
outputs went; the domain logic lives in the packages (`see3d_core`, `see3d_torch`, `see3d_jax`).
"""
