"""``python -m services.agent``: run the agent worker."""

from services.agent.worker import main

if __name__ == "__main__":
    main()
