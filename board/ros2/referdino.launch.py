"""Starts `referdino ros2` next to a stock ROS 2 (Humble/Jazzy) system.

    ros2 launch board/ros2/referdino.launch.py image:=/camera/color/image_raw
    ros2 launch board/ros2/referdino.launch.py \
        cameras:="front:=/cam_front/color/image_raw rear:=/cam_rear/color/image_raw"

With `cameras` (space-separated NAME:=TOPIC pairs) the node runs one stream per camera on one set of
engines and publishes under /referdino/NAME/ (board/README.md, "Several cameras on one node"); without
it, one camera on `image`.

The node is a plain executable (it does not link rclcpp), so it is an ExecuteProcess, not a Node.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def camera_args(cameras, image):
    """The node's camera arguments: `--camera NAME -r NAME/image:=TOPIC` per `NAME:=TOPIC` pair of
    `cameras`, or `-r image:=IMAGE` for the single camera when `cameras` is empty."""
    pairs = cameras.split()
    if not pairs:
        return ["-r", f"image:={image}"]
    args = []
    for pair in pairs:
        name, sep, topic = pair.partition(":=")
        if not sep or not name or not topic:
            raise ValueError(f"cameras: {pair!r} is not NAME:=TOPIC")
        args += ["--camera", name, "-r", f"{name}/image:={topic}"]
    return args


def _node(context):
    get = lambda n: LaunchConfiguration(n).perform(context)
    return [
        ExecuteProcess(
            cmd=[
                "referdino", "ros2",
                "--node-name", "referdino",
                *camera_args(get("cameras"), get("image")),
                "--service-mapping", get("service_mapping"),
                "--engines", get("engines"), "--backend", "tensorrt",
                "--domain-id", get("domain_id"),
            ],
            output="screen",
        )
    ]


def generate_launch_description():
    import os

    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/color/image_raw"),
        DeclareLaunchArgument("cameras", default_value=""),
        DeclareLaunchArgument("engines", default_value="/var/lib/referdino/engines"),
        # enhanced = Fast DDS (ROS 2 default RMW); cyclone = rmw_cyclonedds_cpp
        DeclareLaunchArgument("service_mapping", default_value="enhanced"),
        DeclareLaunchArgument("domain_id", default_value=os.environ.get("ROS_DOMAIN_ID", "0")),
        OpaqueFunction(function=_node),
    ])
