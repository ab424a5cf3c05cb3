"""The agents, one concern per module; each module's `install(runtime)` registers its agents."""
