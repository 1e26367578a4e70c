"""Pre-training teachers: the EnCodec acoustic teacher and the CQT musical teacher."""
