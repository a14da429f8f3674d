"""The web UI (NiceGUI): the only part of flowdc that imports NiceGUI; `flowdc ui` and `flowdc demo --ui`."""
