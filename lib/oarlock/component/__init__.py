"""A component: component.json model, its validation, and input schemas."""
