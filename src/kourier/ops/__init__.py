"""Operations: health, metrics, tracing."""
