"""Built-in routing plugins, one class per module under filters/, scorers/ and pickers/, each registered by
its `@plugin` decorator (see scheduling.registry)."""
