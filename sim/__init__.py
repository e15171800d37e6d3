"""SimPy discrete-event WAN simulator (``netstorm.sim``); see DESIGN section 8."""

__all__: list[str] = []
