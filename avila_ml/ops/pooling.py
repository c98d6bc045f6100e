"""(pooling ops: being written)"""
__all__ = []
