"""The OpenAI-compatible server of a split MoE model, its live dashboard and its benchmark client.

    engine = Engine(DistributedMoE.from_pretrained(path, num_devices=4, policy=TopK()))
    app = create_app(engine, api_key=None, limits=Limits())      # FastAPI; run with uvicorn
"""

from wdmoe.serve.app import create_app
from wdmoe.serve.engine import Engine
from wdmoe.serve.schemas import Limits

__all__ = ["Engine", "Limits", "create_app"]
