"""A Vision Transformer for small images, from Keras layers: the model where precision starts to matter.

Patches become tokens through one strided convolution, a learned embedding marks each token's
position, `depth` pre-norm encoder blocks follow (multi-head self-attention, then an MLP, each added
back to its input), and the mean token gives float32 logits. Under float16 the layer norms compute
in float32 (Keras does so for float16 inputs) and the attention softmax subtracts its maximum, so
neither overflows; dynamic loss scaling covers the backward pass.
"""

import keras

from pipeline.core.model import ModelError, float32_logits


@keras.saving.register_keras_serializable(package="pipeline")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per token position (the model's only layer of its own: Keras has none)."""

    def build(self, input_shape):
        self.embedding = self.add_weight(shape=tuple(input_shape[1:]), initializer=keras.initializers.RandomNormal(
            stddev=0.02), name="embedding")

    def call(self, tokens):
        return tokens + keras.ops.cast(self.embedding, tokens.dtype)


def build_vit(input_shape: tuple, num_classes: int, patch_size: int = 7, width: int = 64, depth: int = 4,
              heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.0) -> keras.Model:
    """The ViT of conf/model/vit.yaml (its keys are these arguments)."""
    height, image_width = input_shape[:2]
    if height % patch_size or image_width % patch_size or width % heads:
        raise ModelError(f"model.patch_size={patch_size} must divide the images' {height}x{image_width}, and "
                         f"model.heads={heads} must divide model.width={width}; change them")
    inputs = keras.Input(shape=input_shape, name="image")
    patches = keras.layers.Conv2D(width, patch_size, strides=patch_size, name="patch_embedding")(inputs)
    tokens = keras.layers.Reshape(((height // patch_size) * (image_width // patch_size), width))(patches)
    tokens = PositionEmbedding(name="position_embedding")(tokens)
    for block in range(depth):
        normed = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_norm1")(tokens)
        attended = keras.layers.MultiHeadAttention(heads, width // heads, dropout=dropout,
                                                   name=f"block{block}_attention")(normed, normed)
        tokens = keras.layers.Add()([tokens, attended])
        normed = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_norm2")(tokens)
        hidden = keras.layers.Dense(int(width * mlp_ratio), activation="gelu", name=f"block{block}_mlp1")(normed)
        hidden = keras.layers.Dropout(dropout)(hidden)
        hidden = keras.layers.Dense(width, name=f"block{block}_mlp2")(hidden)
        tokens = keras.layers.Add()([tokens, hidden])
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization(epsilon=1e-6, name="norm")(tokens))
    return keras.Model(inputs, float32_logits(pooled, num_classes), name="vit")
