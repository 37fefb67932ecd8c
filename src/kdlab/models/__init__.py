"""Model zoo: every family registers its names on import (see ``base.py`` for the contract).

Families (state-dict layouts match the RepDistiller / mdistiller CIFAR releases):

* ``resnet``       -- resnet8/14/20/32/44/56/110, resnet8x4, resnet32x4
* ``wrn``          -- wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2
* ``vgg``          -- vgg8, vgg11, vgg13, vgg16, vgg19 (BatchNorm variants)
* ``mobilenetv2``  -- MobileNetV2 (RepDistiller ``mobile_half``)
* ``shufflenetv1`` -- ShuffleV1;  ``shufflenetv2`` -- ShuffleV2
* ``resnetv2``     -- ResNet18, ResNet34, ResNet50 (CIFAR stem, classifier ``linear``)

Loading released checkpoints: :func:`kdlab.models.checkpoint.load_weights`.
k networks of one architecture trained as one program (teacher groups):
:func:`kdlab.models.stacked.stack_networks`.
"""

from kdlab.models.base import ModelOutput, Probe, build_model, list_models, probe, register_model

from kdlab.models import resnet  # noqa: F401,E402  (registers resnet8 ... resnet32x4)
from kdlab.models import wrn  # noqa: F401,E402  (wrn_16_1 ... wrn_40_2)
from kdlab.models import vgg  # noqa: F401,E402  (vgg8 ... vgg19)
from kdlab.models import mobilenetv2  # noqa: F401,E402  (MobileNetV2)
from kdlab.models import shufflenetv1  # noqa: F401,E402  (ShuffleV1)
from kdlab.models import shufflenetv2  # noqa: F401,E402  (ShuffleV2)
from kdlab.models import resnetv2  # noqa: F401,E402  (ResNet18, ResNet34, ResNet50)
from kdlab.models import imagenet  # noqa: F401,E402  (imagenet_resnet18/34/50/101, imagenet_mobilenetv1/v2)
from kdlab.models.checkpoint import (  # noqa: E402
    CheckpointError,
    CheckpointMismatch,
    load_weights,
    state_dict_for_export,
)

__all__ = [
    "CheckpointError",
    "CheckpointMismatch",
    "ModelOutput",
    "Probe",
    "build_model",
    "list_models",
    "load_weights",
    "probe",
    "register_model",
    "state_dict_for_export",
]
