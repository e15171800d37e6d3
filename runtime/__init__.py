"""Real TCP runtime (``netstorm.runtime``); see DESIGN section 9."""

__all__: list[str] = []
