"""Starts `referdino ros2` next to a stock ROS 2 (Humble/Jazzy) system.

    ros2 launch board/ros2/referdino.launch.py image:=/camera/color/image_raw

The node is a plain executable (it does not link rclcpp), so it is an ExecuteProcess, not a Node.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration, EnvironmentVariable


def generate_launch_description():
    image = LaunchConfiguration("image")
    engines = LaunchConfiguration("engines")
    mapping = LaunchConfiguration("service_mapping")
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/color/image_raw"),
        DeclareLaunchArgument("engines", default_value="/var/lib/referdino/engines"),
        # enhanced = Fast DDS (ROS 2 default RMW); cyclone = rmw_cyclonedds_cpp
        DeclareLaunchArgument("service_mapping", default_value="enhanced"),
        ExecuteProcess(
            cmd=[
                "referdino", "ros2",
                "--node-name", "referdino",
                "-r", ["image:=", image],
                "--service-mapping", mapping,
                "--engines", engines, "--backend", "tensorrt",
                "--domain-id", EnvironmentVariable("ROS_DOMAIN_ID", default_value="0"),
            ],
            output="screen",
        ),
    ])
