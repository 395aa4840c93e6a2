"""Assembles the platform: stores, resource families, protocols, and the HTTP server."""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import botocore.session
import uvicorn
from botocore.model import ServiceModel

from salvia import __version__
from salvia.algorithms.registry import register_runtimes as register_algorithm_runtimes
from salvia.api.access_control import AccessControl, install_access_control
from salvia.api.json_protocol import JsonProtocol
from salvia.api.rest_protocol import RestJsonProtocol
from salvia.api.router import Router
from salvia.api.runtime import RuntimeProtocol
from salvia.api.s3 import S3Protocol
from salvia.clock import Clock
from salvia.compute.factory import executor_from_settings
from salvia.compute.runtimes import RuntimeRegistry
from salvia.config import Settings
from salvia.processing.engine import ProcessingEngine
from salvia.resources.autoscaling import AutoScaling
from salvia.resources.common import ResourceContext
from salvia.resources.experiments import EXPERIMENT, TRIAL, TRIAL_COMPONENT, Experiments
from salvia.resources.hosting import Hosting
from salvia.resources.lineage import Lineage
from salvia.resources.lineage_tracking import LineageTracker
from salvia.resources.logs import CloudWatchLogs
from salvia.resources.metrics import Metrics
from salvia.resources.mlflow_tracking import MlflowTracking
from salvia.resources.model_registry import ModelRegistry
from salvia.resources.processing import ProcessingJobs
from salvia.resources.registry import Handler, collect, is_read_only
from salvia.resources.search import Search, Searchable
from salvia.resources.tags import Tags
from salvia.resources.training import TrainingJobs
from salvia.resources.transform import TransformJobs
from salvia.resources.trial_components import TrialComponents
from salvia.resources.tuning import HyperParameterTuning
from salvia.runstate import clear_state, write_state
from salvia.serving.async_inference import AsyncInference
from salvia.serving.autoscaler import Autoscaler
from salvia.serving.batch import TransformEngine
from salvia.serving.capture import CaptureWriter
from salvia.serving.engine import EndpointEngine, ServingContext
from salvia.serving.serverless import Serverless
from salvia.store.metadata import MetadataStore
from salvia.store.objects import ObjectStore, object_store_from_settings
from salvia.store.sql import SqlMetadataStore
from salvia.tracking.servers import TrackingContext, TrackingServers
from salvia.training.engine import KIND as TRAINING_JOB
from salvia.training.engine import EngineContext, TrainingEngine
from salvia.tuning import TuningContext, TuningEngine
from salvia.ui import SignIn, StudioApi, create_studio

log = logging.getLogger("salvia")

# Mutating operations run in worker threads (they may wait on a row lock); the limit bounds
# the database connections one server opens. Read-only ones run on the event loop.
WORKER_THREADS = 32


@functools.cache
def service_model(name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(name)


@dataclass
class Platform:
    """The running pieces of one server, so tests and the CLI can reach and close them."""

    settings: Settings
    store: MetadataStore
    objects: ObjectStore
    app: Router
    training: TrainingEngine
    serving: EndpointEngine
    capture: CaptureWriter
    autoscaler: Autoscaler
    transform: TransformEngine
    asynchronous: AsyncInference
    serverless: Serverless
    tracking: TrackingServers
    processing: ProcessingEngine
    tuning: TuningEngine | None = None
    access: AccessControl | None = None

    def start(self, public_url: str) -> None:
        """Begin background work: jobs and endpoints a previous server left are re-attached."""
        self.training.ctx.public_url = public_url
        self.training.recover()
        self.serving.recover()
        self.transform.recover()
        self.asynchronous.start()
        self.serverless.start()
        self.tracking.recover()
        self.processing.recover()
        if self.tuning is not None:
            self.tuning.start()
        self.autoscaler.start()

    def close(self) -> None:
        self.autoscaler.stop()
        self.asynchronous.stop()
        self.serverless.stop()
        if self.tuning is not None:
            self.tuning.shutdown()
        self.training.shutdown()
        self.serving.shutdown()
        self.capture.close()
        self.training.ctx.executor.close()
        if self.access is not None:
            self.access.close()
        self.store.close()
        self.objects.close()


def create_platform(settings: Settings) -> Platform:
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    store = SqlMetadataStore(settings.sqlalchemy_url)
    objects = object_store_from_settings(settings)
    ctx = ResourceContext(settings=settings, store=store, clock=Clock())

    experiments = Experiments(ctx)
    components = TrialComponents(ctx, experiments)
    clock = ctx.clock
    runtimes = RuntimeRegistry()
    register_algorithm_runtimes(runtimes)
    executor = executor_from_settings(settings)
    training = TrainingEngine(
        EngineContext(
            settings=settings,
            store=store,
            objects=objects,
            executor=executor,
            runtimes=runtimes,
            clock=clock,
        )
    )
    capture = CaptureWriter(objects)
    serving = EndpointEngine(ServingContext(settings, store, objects, executor, runtimes, clock))
    transform = TransformEngine(serving)
    training_jobs = TrainingJobs(ctx, training, experiments)
    lineage = Lineage(ctx)
    lineage_tracker = LineageTracker(lineage)
    training.ctx.on_finished = lineage_tracker.after_training(training_jobs.on_finished)
    tuning = TuningEngine(
        TuningContext(
            store,
            clock,
            create_training_job=training_jobs.create_training_job,
            stop_training_job=lambda name: training_jobs.stop_training_job(
                {"TrainingJobName": name}
            ),
        )
    )
    search = Search(
        ctx,
        {
            "Experiment": Searchable(EXPERIMENT, "Experiment", experiments.experiment_document),
            "ExperimentTrial": Searchable(TRIAL, "Trial", experiments.trial_document),
            "ExperimentTrialComponent": Searchable(
                TRIAL_COMPONENT, "TrialComponent", components.document
            ),
            "TrainingJob": Searchable(TRAINING_JOB, "TrainingJob", training_jobs.document),
        },
    )
    processing = ProcessingEngine(training.ctx)
    tracking = TrackingServers(
        TrackingContext(settings, store, executor, clock, lambda: training.ctx.public_url)
    )
    sagemaker_handlers = collect(
        experiments,
        components,
        Tags(ctx),
        search,
        training_jobs,
        Hosting(ctx, serving),
        TransformJobs(ctx, transform),
        HyperParameterTuning(ctx, tuning, training_jobs),
        ModelRegistry(ctx, on_registered=lineage_tracker.model_package_registered),
        lineage,
        MlflowTracking(ctx, tracking),
        ProcessingJobs(ctx, processing),
    )
    lineage_tracker.observe(sagemaker_handlers)
    metrics_handlers = collect(Metrics(ctx))

    asynchronous = AsyncInference(serving)
    serverless = Serverless(serving, settings.serverless_idle_seconds)
    runtime = RuntimeProtocol(serving, store, settings, capture, asynchronous, serverless)
    autoscaler = Autoscaler(settings, store, clock, serving, runtime.metrics)
    limiter = anyio.CapacityLimiter(WORKER_THREADS)

    async def run(handler: Handler, params: dict[str, Any]) -> dict[str, Any]:
        if is_read_only(handler):
            return handler(params)
        return await anyio.to_thread.run_sync(handler, params, limiter=limiter)

    control_plane = JsonProtocol(service_model("sagemaker"), sagemaker_handlers, run)
    logs = JsonProtocol(service_model("logs"), collect(CloudWatchLogs(settings)), run)
    metrics = RestJsonProtocol(service_model("sagemaker-metrics"), metrics_handlers, run)
    app = Router(
        json_services=[
            control_plane,
            logs,
            JsonProtocol(service_model("application-autoscaling"), collect(AutoScaling(ctx)), run),
        ],
        rest_services=[
            metrics,
            RestJsonProtocol(service_model("sagemaker-runtime"), {}, run),
            RestJsonProtocol(service_model("sagemaker-featurestore-runtime"), {}, run),
        ],
        fallback=S3Protocol(objects, settings.runtime_dir / "s3", region=settings.region),
        runtime=runtime,
    )
    access = install_access_control(app, settings, store, run, service_model)
    # Studio is a client of the same operations, called in process (in the authenticated mode
    # as its signed-in user, through the guard's policy evaluation)
    studio_api = StudioApi(
        control_plane,
        logs,
        metrics,
        trail=app.json_services.get("com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101"),
        iam=app.query,
        runtime=runtime,
        objects=app.fallback,
        guard=access.guard,
    )
    app.studio = create_studio(
        studio_api, SignIn(access.identities, access.audit) if access.guard else None
    )
    if access.guard is not None:
        access.public_url = lambda: training.ctx.public_url
        training.ctx.role_credentials = access.role_credentials
        serving.ctx.role_environment = access.endpoint_environment
        tracking.ctx.role_credentials = access.role_credentials
    return Platform(
        access=access,
        settings=settings,
        store=store,
        objects=objects,
        app=app,
        training=training,
        serving=serving,
        capture=capture,
        autoscaler=autoscaler,
        tuning=tuning,
        transform=transform,
        asynchronous=asynchronous,
        serverless=serverless,
        tracking=tracking,
        processing=processing,
    )


def _announce_admin_key(platform: Platform) -> None:
    """On the first start in authenticated mode: the administrator's key, shown this once."""
    issued = platform.access.bootstrap() if platform.access is not None else None
    if issued is None:
        return
    print(
        "Salvia runs in authenticated mode and has created its administrator (IAM user "
        f"'{issued['UserName']}'). Its access key is shown this once; the secret is stored "
        "encrypted and cannot be shown again:\n"
        f"  AWS_ACCESS_KEY_ID={issued['AccessKeyId']}\n"
        f"  AWS_SECRET_ACCESS_KEY={issued['SecretAccessKey']}",
        flush=True,
    )


def serve(settings: Settings) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM, then shut down cleanly."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    platform = create_platform(settings)
    _announce_admin_key(platform)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]

    async def announce() -> None:
        record = {
            "pid": os.getpid(),
            "url": f"http://{settings.host}:{port}",
            "home": str(settings.home),
            "database": settings.sqlalchemy_url.split("@")[-1],
            "object_store": settings.s3_endpoint_url or str(settings.objects_dir),
            "version": __version__,
            "started": time.time(),
        }
        write_state(settings, record)
        await anyio.to_thread.run_sync(platform.start, str(record["url"]))
        # What is loaded by now (service models, the store's mappings, the web framework) lives
        # as long as the server: the collector need not walk it on every full collection
        gc.freeze()
        log.info("Salvia %s listening on %s (home %s)", __version__, record["url"], settings.home)

    async def retire() -> None:
        clear_state(settings)

    platform.app.on_startup.append(announce)
    platform.app.on_shutdown.append(retire)
    config = uvicorn.Config(
        platform.app,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Salvia answers clients directly; trusting X-Forwarded-* would only cost time
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal once it has
    # restored the previous handlers; these make that a normal exit (status 0) after cleanup.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        platform.close()
        clear_state(settings)
