"""lgg_jax: low-grade glioma segmentation in brain MRI with JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="lgg_jax",
    version="0.1.0",
    description="LGG brain-MRI segmentation (U-Net, FPN, ResNeXt50-UNet) in JAX/Flax NNX",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.11",
    # configs/, experiments/ and benchmarks/ are used from the repository root
    # (as flax's examples are), never installed as top-level packages.
    packages=find_packages(include=["lgg_jax", "lgg_jax.*"]),
    # The shipped models: lgg_jax/pretrained/<model>/SHA256SUMS and model card,
    # <model>/<member>/ exports (patterns one level each: any setuptools reads them).
    package_data={"lgg_jax.pretrained": ["*/SHA256SUMS", "*/*.md", "*/*.json", "*/*/*.json", "*/*/*.md",
                                         "*/*/*.safetensors", "*/*/*.jax"],
                  # The review page and the NiiVue it vendors (its version, licence, bundled libraries).
                  "lgg_jax": ["review_page/*.html", "review_page/*.js", "review_page/*.css",
                              "review_page/niivue/*"]},
    install_requires=[
        # jax 0.10.x is the newest for Python 3.11 (0.11+ need 3.12). CI's
        # second leg runs 0.11.2; the suite passed once on 0.12.0.1 with
        # flax 0.12.12 and orbax-checkpoint 0.12.8 (without torch and real data).
        "jax>=0.10,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11,<0.13",
        # TFDS without TensorFlow: array_record files read through grain.
        "tensorflow-datasets>=4.9.9",
        "importlib_resources",  # tfds imports it when TensorFlow is absent
        "array-record>=0.8",
        "grain>=0.2.12",
        # 2.0.8 is the last MIT-licensed release; 2.1+ is AGPL.
        "albumentations>=2.0.8,<2.1",
        "opencv-python-headless>=4.10,<6",
        "numpy>=1.26",
        "ml-collections>=1.0",
        "tifffile>=2024.1",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "absl-py>=2.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scipy>=1.10",       # HD95, connected components; radiogenomics (ConvexHull, ndimage, stats, special)
        "imageio>=2.28,<3",  # prediction GIFs (2.28+: frame durations in milliseconds)
        "nibabel>=5.0",      # NIfTI input and output in predict
        "safetensors>=0.4",  # exported weights; torchvision encoder weights without torch
        "flatbuffers>=24.3",  # jax.export serialization of the exported forward pass
    ],
    extras_require={
        # medpy (GPL) is only the tests' reference for HD95, never a dependency.
        # selenium drives Debian's chromium in the review page's browser test (.ci/run installs it).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "medpy==0.5.2", "tensorboard>=2.15", "selenium>=4.20"],
        # ONNX export (lgg_jax.onnx_export); jax2onnx 0.17.1 pins orbax-checkpoint<0.11.37, so CI
        # installs it in a venv of its own (.ci/run onnx) and the core legs keep their orbax.
        "onnx": ["jax2onnx>=0.17.1,<0.18", "onnx>=1.17", "onnxruntime>=1.20"],
        # .pth encoder weights (torchvision's file); .safetensors needs neither.
        "torch": ["torch>=2.4", "torchvision>=0.19"],
    },
)
