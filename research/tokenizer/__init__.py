"""Semantic-distilled speech tokenizer (SpeechTokenizer): SEANet codec with residual vector quantization whose
first level is distilled from a semantic teacher."""
