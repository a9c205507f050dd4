from embergpt.chat.template import PLAIN_STOP_STRINGS, ROLES, RenderedChat, render_chat  # noqa: F401  (moved)
