"""facebeam: emotion, age and gender for every face in a collection of photos and videos."""

from setuptools import find_packages, setup

setup(
    name="facebeam",
    version="0.1.0",
    description="Apache Beam pipeline: faces in photos and videos -> emotion, age, gender -> Parquet",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["models", "models.*", "transforms", "transforms.*", "pipelines", "pipelines.*"]),
    package_data={"models": ["weights/*.keras", "weights/*.json", "cards/*.md"]},
    include_package_data=True,
    # Versions tested together (Python 3.11, CPU).
    install_requires=[
        "apache-beam==2.77.0",
        # tensorflow-cpu has x86-64 wheels only; elsewhere (Apple silicon, ARM Linux) the full build.
        "tensorflow-cpu==2.21.0; platform_machine == 'x86_64' or platform_machine == 'AMD64'",
        "tensorflow==2.21.0; platform_machine != 'x86_64' and platform_machine != 'AMD64'",
        "keras==3.15.1",
        "ai-edge-litert==2.3.0",
        "mtcnn==1.0.0",
        "opencv-python-headless==4.14.0.94",
        "pyarrow==25.0.1",
        "numpy==2.4.6",
        "pillow==12.3.0",
        "duckdb==2.0.0",
        "matplotlib==3.11.2",
        "tqdm==4.70.1",
    ],
    extras_require={
        "gcp": ["apache-beam[gcp]==2.77.0"],
        "test": ["pytest==9.2.0", "pandas==3.1.1", "apache-beam[gcp]==2.77.0", "pyyaml==6.0.3"],
    },
    entry_points={"console_scripts": ["facebeam=pipelines.cli:main"]},
)
