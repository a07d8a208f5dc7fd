"""LocalStack (the project's pinned localstack-core, host mode) with its Lambda service able to
run functions on this machine: offline, with every function container on the host network.

Four changes to LocalStack's Docker executor, made before it starts:
1. a container on the `host` network has the address 127.0.0.1 (LocalStack looks for the
   container in the network's list, where host-network containers have none);
2. every execution environment gets a port of its own for invocations
   (`LOCALSTACK_INTEROP_PORT`): on the host network all containers share the host's ports;
3. a runtime image that is present is not pulled (no registry is reachable);
4. the init (`/var/rapid/init`) is `init.py` beside this file, not a download from GitHub.

Run with the project's LocalStack venv's Python; settings come from the environment
(`localstack/lambda/stack.sh` sets them, every address on 127.0.0.1).
"""
import os
import pathlib
import runpy
import shutil
import tempfile

from localstack.services.lambda_.invocation import docker_runtime_executor as executor
from localstack.utils.container_utils.container_client import ContainerClient
from localstack.utils.net import get_free_tcp_port

address_on = ContainerClient.get_container_ipv4_for_network


def host_address(self, container_name_or_id, container_network):
    if container_network == "host":
        return "127.0.0.1"
    return address_on(self, container_name_or_id, container_network)


ContainerClient.get_container_ipv4_for_network = host_address

start = executor.DockerRuntimeExecutor.start


def start_on_own_port(self, env_vars):
    port = get_free_tcp_port()
    self.executor_endpoint.container_port = port
    env_vars["LOCALSTACK_INTEROP_PORT"] = str(port)
    return start(self, env_vars)


executor.DockerRuntimeExecutor.start = start_on_own_port

ensure_image = executor._ensure_runtime_image_present


def image_present_or_pulled(image, platform):
    try:
        executor.CONTAINER_CLIENT.inspect_image(image, pull=False)
    except Exception:
        ensure_image(image, platform)


executor._ensure_runtime_image_present = image_present_or_pulled

# LocalStack copies the directory it is given into each container as /var/rapid.
init_dir = pathlib.Path(tempfile.mkdtemp(prefix="llmo-lambda-init-"))
(init_dir / "var" / "rapid").mkdir(parents=True)
shutil.copy(pathlib.Path(__file__).with_name("init.py"), init_dir / "var" / "rapid" / "init")
os.chmod(init_dir / "var" / "rapid" / "init", 0o755)
executor.get_runtime_client_path = lambda: init_dir

runpy.run_module("localstack.runtime.main", run_name="__main__")
