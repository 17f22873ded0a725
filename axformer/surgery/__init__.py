"""Structural model surgery (DESIGN §3, §11): the encoder families' one interface (families: where a layer's
projections, FFN and LayerNorms live), removing elements so weights really shrink (elements: FFN blocks,
neuron groups, attention blocks, heads) and top-K sparse hard attention (hard_attention).

May import: axformer.utils only. Searches (axformer.search) decide what to cut; this package only cuts.
"""
